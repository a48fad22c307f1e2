//! WebSockets for features: an upgraded actix-web request with a send
//! buffer of one frame.
//!
//! actix's response body is polled only while the connection's write buffer
//! has room, so a sender that waits for its frame to be taken is waiting for
//! the client: with one frame in the channel, a slow client holds its own
//! sender back (and the feature's send timeout drops it) instead of frames
//! piling up in the node. Frames from the client are decoded from the
//! request payload with actix-http's codec, which refuses frames over the
//! size limit.

use actix_codec::{Decoder, Encoder};
use actix_http::ws::{Codec, Frame, Message, ProtocolError};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

/// Sends messages to the client.
pub struct Sender {
    frames: tokio::sync::mpsc::Sender<Bytes>,
    codec: Codec,
}

/// Messages from the client.
pub struct Receiver {
    payload: web::Payload,
    buffer: BytesMut,
    codec: Codec,
}

/// The client's messages.
#[derive(Debug)]
pub enum Incoming {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    Close,
}

/// The other side is gone.
#[derive(Debug)]
pub struct Closed;

/// Completes the upgrade: the response to return, and both directions.
/// Client frames over `max_frame` bytes are a protocol error.
pub fn upgrade(
    req: &HttpRequest,
    payload: web::Payload,
    max_frame: usize,
) -> Result<(HttpResponse, Sender, Receiver), actix_http::ws::HandshakeError> {
    let mut response = actix_http::ws::handshake(req.head())?;
    // y-websocket and other clients may ask for a subprotocol; echo the
    // first one offered (the server speaks whatever the route speaks).
    if let Some(offered) = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        if let Ok(value) = actix_http::header::HeaderValue::from_str(offered) {
            response.insert_header(("sec-websocket-protocol", value));
        }
    }
    let (frames, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|frame| (Ok::<_, actix_web::Error>(frame), rx))
    });
    let response = response
        .message_body(actix_web::body::BoxBody::new(
            actix_web::body::BodyStream::new(body),
        ))
        .map(HttpResponse::from)
        .map_err(|_| actix_http::ws::HandshakeError::GetMethodRequired)?;
    Ok((
        response,
        Sender {
            frames,
            codec: Codec::new(),
        },
        Receiver {
            payload,
            buffer: BytesMut::new(),
            codec: Codec::new().max_size(max_frame),
        },
    ))
}

impl Sender {
    async fn send(&mut self, message: Message) -> Result<(), Closed> {
        let mut encoded = BytesMut::new();
        self.codec
            .encode(message, &mut encoded)
            .map_err(|_| Closed)?;
        self.frames.send(encoded.freeze()).await.map_err(|_| Closed)
    }

    /// Waits until the previous frame was taken by the connection.
    pub async fn text(&mut self, text: String) -> Result<(), Closed> {
        self.send(Message::Text(text.into())).await
    }

    pub async fn binary(&mut self, bytes: Bytes) -> Result<(), Closed> {
        self.send(Message::Binary(bytes)).await
    }

    pub async fn ping(&mut self) -> Result<(), Closed> {
        self.send(Message::Ping(Bytes::new())).await
    }

    pub async fn pong(&mut self, payload: Bytes) -> Result<(), Closed> {
        self.send(Message::Pong(payload)).await
    }

    /// Sends a close frame (policy violation, with `reason`); the response
    /// ends when the sender is dropped.
    pub async fn close(mut self, reason: &str) {
        let reason = actix_http::ws::CloseReason {
            code: actix_http::ws::CloseCode::Policy,
            description: Some(reason.chars().take(120).collect()),
        };
        let _ = self.send(Message::Close(Some(reason))).await;
    }
}

impl Receiver {
    /// The next message; `Err` for a protocol error (an oversized frame
    /// among them), `Ok(Close)` when the client closed or went away.
    pub async fn next(&mut self) -> Result<Incoming, ProtocolError> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buffer)? {
                return Ok(match frame {
                    Frame::Text(b) => Incoming::Text(b),
                    Frame::Binary(b) => Incoming::Binary(b),
                    Frame::Ping(b) => Incoming::Ping(b),
                    Frame::Pong(_) => Incoming::Pong,
                    Frame::Close(_) => Incoming::Close,
                    // Fragmented messages: no client of ours sends them (a
                    // browser never fragments what it sends).
                    Frame::Continuation(_) => return Err(ProtocolError::ContinuationNotStarted),
                });
            }
            match self.payload.next().await {
                Some(Ok(bytes)) => self.buffer.extend_from_slice(&bytes),
                Some(Err(_)) | None => return Ok(Incoming::Close),
            }
        }
    }
}
