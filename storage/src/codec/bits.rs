//! MSB-first bit stream used by the Gorilla encodings.

use super::CodecError;

/// Appends bits most-significant first into a byte vector.
#[derive(Default)]
pub struct BitWriter {
    buf: Vec<u8>,
    acc: u64,
    acc_bits: u32,
}

impl BitWriter {
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes),
            acc: 0,
            acc_bits: 0,
        }
    }

    /// Writes the low `n` bits of `value` (`n <= 64`).
    #[inline]
    pub fn write(&mut self, value: u64, n: u32) {
        debug_assert!(n <= 64);
        if n == 0 {
            return;
        }
        let value = if n == 64 {
            value
        } else {
            value & ((1u64 << n) - 1)
        };
        let free = 64 - self.acc_bits;
        if n <= free {
            self.acc = if n == 64 {
                value
            } else {
                (self.acc << n) | value
            };
            self.acc_bits += n;
        } else {
            // Fill the accumulator, flush it, keep the rest.
            let rest = n - free;
            self.acc = (self.acc << free) | (value >> rest);
            self.buf.extend_from_slice(&self.acc.to_be_bytes());
            self.acc = value & ((1u64 << rest) - 1);
            self.acc_bits = rest;
            return;
        }
        if self.acc_bits == 64 {
            self.buf.extend_from_slice(&self.acc.to_be_bytes());
            self.acc = 0;
            self.acc_bits = 0;
        }
    }

    /// Flushes the partial accumulator, padding with zero bits.
    pub fn finish(mut self) -> Vec<u8> {
        if self.acc_bits > 0 {
            let bytes = self.acc_bits.div_ceil(8);
            let aligned = self.acc << (64 - self.acc_bits);
            self.buf
                .extend_from_slice(&aligned.to_be_bytes()[..bytes as usize]);
        }
        self.buf
    }
}

/// Reads bits written by [`BitWriter`]; running past the end is an error.
pub struct BitReader<'a> {
    data: &'a [u8],
    pos: usize, // in bits
}

impl<'a> BitReader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    #[inline]
    pub fn read(&mut self, n: u32) -> Result<u64, CodecError> {
        if n == 0 {
            return Ok(0);
        }
        let end = self.pos + n as usize;
        if end > self.data.len() * 8 {
            return Err(CodecError::Truncated);
        }
        let mut out = 0u64;
        let mut remaining = n;
        while remaining > 0 {
            let byte = self.data[self.pos / 8];
            let offset = (self.pos % 8) as u32;
            let avail = 8 - offset;
            let take = avail.min(remaining);
            let bits = (byte >> (avail - take)) & ((1u16 << take) - 1) as u8;
            out = (out << take) | bits as u64;
            remaining -= take;
            self.pos += take as usize;
        }
        Ok(out)
    }

    #[inline]
    pub fn read_bit(&mut self) -> Result<bool, CodecError> {
        Ok(self.read(1)? == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_mixed_widths() {
        let items: Vec<(u64, u32)> = (0..300u64)
            .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15), (i % 64 + 1) as u32))
            .collect();
        let mut w = BitWriter::default();
        for &(v, n) in &items {
            w.write(v, n);
        }
        let buf = w.finish();
        let mut r = BitReader::new(&buf);
        for &(v, n) in &items {
            let mask = if n == 64 { u64::MAX } else { (1 << n) - 1 };
            assert_eq!(r.read(n).unwrap(), v & mask);
        }
    }

    #[test]
    fn reading_past_the_end_is_an_error() {
        let mut r = BitReader::new(&[0xff]);
        assert_eq!(r.read(8).unwrap(), 0xff);
        assert!(r.read(1).is_err());
    }
}
