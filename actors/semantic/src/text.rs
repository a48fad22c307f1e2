//! Text search: a small grammar of shape words turned into a template
//! series, which is then embedded and searched like any pattern.
//!
//! ```text
//! query    := step (joiner step)*
//! joiner   := "then" | "followed by" | ","
//! step     := modifier* shape ["twice"]
//! modifier := "sudden" | "gradual"
//! shape    := "spike" | "dip" | "increase" | "decrease" | "plateau"
//!           | "oscillation" | "level shift" | "recovery"
//! ```
//!
//! Each step takes an equal share of the template; the level carries from
//! one step to the next (an increase ends higher, a recovery returns to
//! where the template started). Words are case-insensitive; a few plural
//! and synonym forms are accepted (`spikes`, `rise`, `drop`, `flat`).

use crate::SemanticError;

/// The words the grammar knows, as an error lists them.
pub const KNOWN: &str = "spike, dip, sudden, gradual, increase, decrease, plateau, oscillation, level shift, recovery, followed by, then, twice";

/// Longest query text, bytes.
pub const MAX_TEXT: usize = 512;
/// Most steps in one query.
pub const MAX_STEPS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Spike,
    Dip,
    Increase,
    Decrease,
    Plateau,
    Oscillation,
    LevelShift,
    Recovery,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// As the shape goes by default (a ramp for an increase, a step for a
    /// level shift).
    Default,
    Sudden,
    Gradual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub shape: Shape,
    pub pace: Pace,
}

/// The steps a query describes (`twice` repeats its step).
pub fn parse(text: &str) -> Result<Vec<Step>, SemanticError> {
    if text.len() > MAX_TEXT {
        return Err(SemanticError::Invalid(format!(
            "text: at most {MAX_TEXT} bytes"
        )));
    }
    let lower = text.to_lowercase().replace(',', " , ");
    let words: Vec<&str> = lower.split_whitespace().collect();
    let mut steps = Vec::new();
    let mut pace = Pace::Default;
    let mut expect_shape = true;
    let mut i = 0;
    while i < words.len() {
        let (word, next) = (words[i], words.get(i + 1).copied());
        let two = next.map(|n| format!("{word} {n}"));
        let mut used = 1;
        match (word, two.as_deref()) {
            (_, Some("followed by")) | ("then", _) | (",", _) => {
                if expect_shape {
                    return Err(unexpected(word, "a shape"));
                }
                if two.as_deref() == Some("followed by") {
                    used = 2;
                }
                expect_shape = true;
            }
            ("sudden" | "suddenly" | "sharp" | "abrupt", _) => pace = Pace::Sudden,
            ("gradual" | "gradually" | "slow" | "steady", _) => pace = Pace::Gradual,
            ("twice", _) => {
                let Some(&last) = steps.last().filter(|_| !expect_shape) else {
                    return Err(unexpected(word, "a shape before it"));
                };
                steps.push(last);
            }
            (_, Some("level shift" | "level shifts")) => {
                used = 2;
                push(&mut steps, &mut pace, &mut expect_shape, Shape::LevelShift)?;
            }
            ("shift" | "step", _) => {
                push(&mut steps, &mut pace, &mut expect_shape, Shape::LevelShift)?
            }
            (w, _) => {
                let shape = match w {
                    "spike" | "spikes" | "peak" | "burst" => Shape::Spike,
                    "dip" | "dips" | "drop" | "drops" | "trough" => Shape::Dip,
                    "increase" | "increases" | "rise" | "rises" | "ramp" | "growth" => {
                        Shape::Increase
                    }
                    "decrease" | "decreases" | "decline" | "fall" | "falls" => Shape::Decrease,
                    "plateau" | "plateaus" | "flat" | "steady-state" => Shape::Plateau,
                    "oscillation" | "oscillations" | "oscillating" | "wave" | "cycle" => {
                        Shape::Oscillation
                    }
                    "recovery" | "recovers" | "recover" | "back" => Shape::Recovery,
                    "a" | "an" | "the" | "and" => {
                        i += 1;
                        continue;
                    }
                    other => {
                        return Err(SemanticError::Invalid(format!(
                            "unknown word {other:?}; the shape words are: {KNOWN}"
                        )))
                    }
                };
                push(&mut steps, &mut pace, &mut expect_shape, shape)?;
            }
        }
        i += used;
        if steps.len() > MAX_STEPS {
            return Err(SemanticError::Invalid(format!(
                "at most {MAX_STEPS} steps in one query"
            )));
        }
    }
    if steps.is_empty() {
        return Err(SemanticError::Invalid(format!(
            "no shape in {text:?}; the shape words are: {KNOWN}"
        )));
    }
    if expect_shape {
        return Err(SemanticError::Invalid(
            "the query ends with a joiner; a shape must follow it".into(),
        ));
    }
    Ok(steps)
}

fn push(
    steps: &mut Vec<Step>,
    pace: &mut Pace,
    expect_shape: &mut bool,
    shape: Shape,
) -> Result<(), SemanticError> {
    if !*expect_shape {
        return Err(SemanticError::Invalid(format!(
            "two shapes without \"then\" or \"followed by\" between them (before {shape:?})"
        )));
    }
    steps.push(Step {
        shape,
        pace: std::mem::replace(pace, Pace::Default),
    });
    *expect_shape = false;
    Ok(())
}

fn unexpected(word: &str, wanted: &str) -> SemanticError {
    SemanticError::Invalid(format!(
        "{word:?} needs {wanted}; the shape words are: {KNOWN}"
    ))
}

/// The template series of `steps`, `n` samples long.
pub fn template(steps: &[Step], n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    let mut level = 0.0f64;
    let base = 0.0f64;
    for (k, step) in steps.iter().enumerate() {
        let from = k * n / steps.len();
        let to = (k + 1) * n / steps.len();
        let len = (to - from).max(1);
        for i in 0..len {
            let t = (i as f64 + 0.5) / len as f64; // 0..1 within the step
            let ramp = |pace: Pace| match pace {
                // A steep logistic edge at the middle.
                Pace::Sudden => 1.0 / (1.0 + (-(t - 0.5) * 40.0).exp()),
                _ => t,
            };
            let v = match step.shape {
                Shape::Spike | Shape::Dip => {
                    let width = if step.pace == Pace::Gradual {
                        0.18
                    } else {
                        0.06
                    };
                    let bump = (-((t - 0.5) / width).powi(2)).exp() * 3.0;
                    level
                        + if step.shape == Shape::Spike {
                            bump
                        } else {
                            -bump
                        }
                }
                Shape::Increase => level + 2.0 * ramp(step.pace),
                Shape::Decrease => level - 2.0 * ramp(step.pace),
                Shape::Plateau => level,
                Shape::Oscillation => level + (t * 3.0 * std::f64::consts::TAU).sin(),
                Shape::LevelShift => {
                    let pace = if step.pace == Pace::Gradual {
                        Pace::Gradual
                    } else {
                        Pace::Sudden
                    };
                    level + 2.0 * ramp(pace)
                }
                Shape::Recovery => level + (base - level) * ramp(step.pace),
            };
            out.push(v);
        }
        level = match step.shape {
            Shape::Increase | Shape::LevelShift => level + 2.0,
            Shape::Decrease => level - 2.0,
            Shape::Recovery => base,
            _ => level,
        };
    }
    out.truncate(n);
    while out.len() < n {
        out.push(level);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(text: &str) -> Vec<Shape> {
        parse(text).unwrap().iter().map(|s| s.shape).collect()
    }

    #[test]
    fn the_grammar_reads_steps_joiners_and_modifiers() {
        use Shape::*;
        assert_eq!(shapes("spike"), [Spike]);
        assert_eq!(
            shapes("Sudden spike followed by gradual recovery"),
            [Spike, Recovery]
        );
        assert_eq!(
            shapes("a dip twice then a level shift"),
            [Dip, Dip, LevelShift]
        );
        assert_eq!(
            shapes("increase, plateau, decrease"),
            [Increase, Plateau, Decrease]
        );
        let s = parse("gradual increase then sudden drop").unwrap();
        assert_eq!((s[0].pace, s[1].pace), (Pace::Gradual, Pace::Sudden));
    }

    #[test]
    fn unknown_words_and_broken_queries_say_what_is_known() {
        for bad in [
            "spike wobble",
            "",
            "then spike",
            "spike then",
            "spike dip",
            "twice",
            "sudden",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("spike") || e.contains("joiner") || e.contains("shape"),
                "{bad}: {e}"
            );
        }
        let e = parse("spike wobble").unwrap_err().to_string();
        assert!(e.contains("\"wobble\"") && e.contains(KNOWN), "{e}");
        assert!(parse(&"spike then ".repeat(100)).is_err());
        assert!(parse(&"x".repeat(MAX_TEXT + 1)).is_err());
    }

    #[test]
    fn templates_have_the_shape_they_name() {
        let n = 64;
        let spike = template(&parse("spike").unwrap(), n);
        let peak = spike.iter().cloned().fold(f64::MIN, f64::max);
        // The middle of 64 samples: between 31 and 32.
        assert!(matches!(
            spike.iter().position(|&v| v == peak),
            Some(31 | 32)
        ));
        let up = template(&parse("increase").unwrap(), n);
        assert!(up.windows(2).all(|w| w[1] >= w[0]));
        let shift = template(&parse("level shift").unwrap(), n);
        // A step: the middle quarter holds nearly all of the rise.
        assert!(shift[40] - shift[24] > 1.9, "{shift:?}");
        let back = template(&parse("increase then recovery").unwrap(), n);
        assert!(back[n - 1].abs() < 0.1 && back[n / 2] > 1.9, "{back:?}");
        for text in [
            "spike then dip twice",
            "oscillation",
            "gradual decrease then plateau",
        ] {
            let t = template(&parse(text).unwrap(), n);
            assert_eq!(t.len(), n);
            assert!(t.iter().all(|v| v.is_finite()));
        }
    }
}
