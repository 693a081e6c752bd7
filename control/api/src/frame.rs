//! The push protocol's framing, for both ends: one JSON document per line, each line bounded. A peer that sends
//! a line longer than the bound gets an error, never an unbounded buffer.

use serde::Serialize;

/// A line longer than the decoder's bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a line is longer than {max} bytes")]
pub struct LineTooLong {
    pub max: usize,
}

/// Splits a byte stream into lines (without the `\n`), skipping blank ones.
#[derive(Debug)]
pub struct LineDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl LineDecoder {
    /// Lines may be up to `max` bytes long.
    pub fn new(max: usize) -> Self {
        LineDecoder { buf: Vec::new(), max }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete, non-blank line; `Ok(None)` until more bytes arrive; an error once the bytes held
    /// without a line end exceed the bound (the stream is then unusable).
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, LineTooLong> {
        while let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=end).collect();
            line.pop();
            if line.len() > self.max {
                return Err(LineTooLong { max: self.max });
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Ok(Some(line));
            }
        }
        if self.buf.len() > self.max {
            return Err(LineTooLong { max: self.max });
        }
        Ok(None)
    }
}

/// One message as a line: compact JSON and `\n` (JSON escapes every newline inside strings).
pub fn encode_line<T: Serialize>(message: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ConfigAck;

    #[test]
    fn lines_split_across_reads_and_blank_lines_skipped() {
        let mut decoder = LineDecoder::new(64);
        decoder.push(b"\n  \n{\"version\":1}\n{\"vers");
        assert_eq!(decoder.next_line(), Ok(Some(b"{\"version\":1}".to_vec())));
        assert_eq!(decoder.next_line(), Ok(None));
        decoder.push(b"ion\":2}\n");
        assert_eq!(decoder.next_line(), Ok(Some(b"{\"version\":2}".to_vec())));
        assert_eq!(decoder.next_line(), Ok(None));
    }

    #[test]
    fn a_line_over_the_bound_is_an_error_with_or_without_its_end() {
        let mut decoder = LineDecoder::new(8);
        decoder.push(b"0123456789");
        assert_eq!(decoder.next_line(), Err(LineTooLong { max: 8 }));
        let mut decoder = LineDecoder::new(8);
        decoder.push(b"0123456789\n");
        assert_eq!(decoder.next_line(), Err(LineTooLong { max: 8 }));
    }

    #[test]
    fn a_message_survives_encode_then_decode() {
        let ack = ConfigAck { version: 7, error: Some("line one\nline two".into()) };
        let mut decoder = LineDecoder::new(1024);
        decoder.push(&encode_line(&ack).expect("encodes"));
        let line = decoder.next_line().expect("bounded").expect("a line");
        assert_eq!(serde_json::from_slice::<ConfigAck>(&line).expect("decodes"), ack);
    }
}
