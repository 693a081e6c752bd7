//! Request bodies that a retry can send again.
//!
//! A body is made replayable up front only when that costs no waiting that could deadlock: it is empty, it
//! announces an exact length (`Content-Length`) no larger than the cap, so the client is committed to sending
//! it all without waiting for a response, or its length is unknown but it has already arrived in full. Such a
//! body is read before the first attempt; every attempt then yields the same bytes.
//!
//! A body of unknown length still arriving (a gRPC call: HEADERS, then DATA without a length) is teed instead,
//! as Envoy and linkerd2-proxy do: the first attempt streams it while a copy is kept, up to the cap. If that
//! attempt fails in a way the policy retries and the body had ended within the cap by then (a unary call the
//! server read before answering UNAVAILABLE), the copy is replayed; otherwise (a stream still open, a body over
//! the cap) the failure is the answer. A body announced over the cap is sent once, unbuffered.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

/// The default cap on a body buffered for replay, per request.
pub const DEFAULT_REPLAY_CAP: usize = 64 * 1024;

/// A fully read body: each call to [`Replay::body`] yields the same bytes and trailers.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl Replay {
    /// A fresh body for one attempt. Cheap: the bytes are reference-counted.
    pub fn body<B>(&self) -> RetryBody<B> {
        RetryBody(Inner::Buffered { data: Some(self.data.clone()), trailers: self.trailers.clone() })
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// What [`buffer`] made of a body.
pub enum Prepared<B> {
    /// May be sent any number of times.
    Replayable(Replay),
    /// Must be sent exactly once (what was already read is sent first).
    Once(RetryBody<B>),
    /// Sent once as it arrives, while [`Tee`] keeps a copy: replayable afterwards if it ended within the cap.
    Teed(RetryBody<B>, Tee),
}

/// The copy a teed body keeps of what it passed on.
#[derive(Clone)]
pub struct Tee(Arc<Mutex<Copy>>);

#[derive(Default)]
struct Copy {
    chunks: Vec<Bytes>,
    len: usize,
    cap: usize,
    trailers: Option<HeaderMap>,
    ended: bool,
    /// More than the cap passed: the copy was dropped.
    over: bool,
}

impl Copy {
    fn record(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            self.len += data.len();
            if self.len > self.cap {
                self.over = true;
                self.chunks = Vec::new();
            } else if !self.over {
                self.chunks.push(data.clone());
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            self.trailers = Some(trailers.clone());
        }
    }
}

impl Tee {
    /// The whole body, if it has ended within the cap.
    pub fn replay(&self) -> Option<Replay> {
        let copy = self.0.lock().ok()?;
        if !copy.ended || copy.over {
            return None;
        }
        Some(Replay { data: concat(copy.chunks.iter().cloned().collect(), copy.len), trailers: copy.trailers.clone() })
    }
}

fn concat(mut chunks: VecDeque<Bytes>, len: usize) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop_front().unwrap_or_default(),
        _ => chunks
            .iter()
            .fold(BytesMut::with_capacity(len), |mut all, c| {
                all.extend_from_slice(c);
                all
            })
            .freeze(),
    }
}

/// The body an attempt sends: replayed bytes, or the original stream (possibly after a prefix already read).
pub struct RetryBody<B>(Inner<B>);

enum Inner<B> {
    Buffered {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    Streaming {
        prefix: VecDeque<Bytes>,
        rest: B,
    },
    /// Streaming, recording what passes (the prefix is recorded already).
    Teeing {
        prefix: VecDeque<Bytes>,
        rest: B,
        copy: Tee,
    },
}

impl<B> RetryBody<B> {
    /// The original body, sent once and unbuffered (for requests that will not be retried).
    pub fn once(body: B) -> Self {
        RetryBody(Inner::Streaming { prefix: VecDeque::new(), rest: body })
    }
}

/// Reads `body` for replay if that is possible without waiting on the client indefinitely (see module docs).
pub async fn buffer<B>(mut body: B, cap: usize) -> Result<Prepared<B>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    if body.is_end_stream() {
        return Ok(Prepared::Replayable(Replay::default()));
    }
    // Exact length within the cap: wait for all of it. Unknown length: take only what has already arrived.
    let wait = match body.size_hint().exact() {
        Some(len) if len <= cap as u64 => true,
        Some(_) => return Ok(Prepared::Once(RetryBody::once(body))),
        None => false,
    };
    let mut chunks = VecDeque::new();
    let mut len = 0;
    let mut trailers = None;
    loop {
        let frame = if wait {
            body.frame().await
        } else {
            match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                // Still arriving (the client may be waiting for the response before it sends more): tee it.
                Poll::Pending => {
                    let copy = Copy { chunks: chunks.iter().cloned().collect(), len, cap, ..Copy::default() };
                    let tee = Tee(Arc::new(Mutex::new(copy)));
                    let body = RetryBody(Inner::Teeing { prefix: chunks, rest: body, copy: tee.clone() });
                    return Ok(Prepared::Teed(body, tee));
                }
            }
        };
        let Some(frame) = frame else { break };
        match frame?.into_data() {
            Ok(data) => {
                len += data.len();
                chunks.push_back(data);
                if len > cap {
                    // Over the cap without a length, or the length was announced wrongly (hyper normally
                    // refuses that before we see it).
                    return Ok(Prepared::Once(RetryBody(Inner::Streaming { prefix: chunks, rest: body })));
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                    break;
                }
            }
        }
    }
    Ok(Prepared::Replayable(Replay { data: concat(chunks, len), trailers }))
}

impl<B> Body for RetryBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match &mut self.get_mut().0 {
            Inner::Buffered { data, trailers } => {
                if let Some(data) = data.take().filter(|d| !d.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            Inner::Streaming { prefix, rest } => match prefix.pop_front() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => Pin::new(rest).poll_frame(cx),
            },
            Inner::Teeing { prefix, rest, copy } => {
                if let Some(data) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                let polled = Pin::new(rest).poll_frame(cx);
                if let Ok(mut copy) = copy.0.lock() {
                    match &polled {
                        Poll::Ready(Some(Ok(frame))) => copy.record(frame),
                        Poll::Ready(None) => copy.ended = true,
                        Poll::Ready(Some(Err(_))) => copy.over = true,
                        Poll::Pending => {}
                    }
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Buffered { data, trailers } => data.as_ref().is_none_or(Bytes::is_empty) && trailers.is_none(),
            Inner::Streaming { prefix, rest } => prefix.is_empty() && rest.is_end_stream(),
            Inner::Teeing { prefix, rest, copy } => {
                let end = prefix.is_empty() && rest.is_end_stream();
                // The sender may stop at this answer without polling for the end.
                if end {
                    if let Ok(mut copy) = copy.0.lock() {
                        copy.ended = true;
                    }
                }
                end
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Buffered { data, .. } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Inner::Streaming { prefix, rest } | Inner::Teeing { prefix, rest, .. } => {
                let buffered: u64 = prefix.iter().map(|b| b.len() as u64).sum();
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + buffered);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + buffered);
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Empty, Full, StreamBody};
    use std::convert::Infallible;

    async fn collect<B: Body<Data = Bytes> + Unpin>(body: B) -> (Bytes, Option<HeaderMap>)
    where
        B::Error: std::fmt::Debug,
    {
        let collected = body.collect().await.expect("body");
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    }

    #[tokio::test]
    async fn a_small_body_replays_the_same_bytes_and_trailers() {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"hello "))),
            Ok(Frame::data(Bytes::from_static(b"world"))),
            Ok(Frame::trailers(HeaderMap::from_iter([(
                http::header::HeaderName::from_static("grpc-status"),
                http::HeaderValue::from_static("0"),
            )]))),
        ];
        // A stream with an announced length, as hyper presents a Content-Length body.
        let body = WithLength(StreamBody::new(futures_util::stream::iter(frames)), 11);
        let Ok(Prepared::Replayable(replay)) = buffer(body, DEFAULT_REPLAY_CAP).await else {
            panic!("expected a replayable body");
        };
        for _ in 0..3 {
            let (data, trailers) = collect(replay.body::<Empty<Bytes>>()).await;
            assert_eq!(&data[..], b"hello world");
            assert_eq!(trailers.and_then(|t| t.get("grpc-status").cloned()), Some(http::HeaderValue::from_static("0")));
        }
    }

    #[tokio::test]
    async fn an_empty_body_is_replayable() {
        let Ok(Prepared::Replayable(replay)) = buffer(Empty::<Bytes>::new(), 0).await else {
            panic!("expected replayable");
        };
        assert!(replay.is_empty());
        assert!(replay.body::<Empty<Bytes>>().is_end_stream());
    }

    #[tokio::test]
    async fn a_body_over_the_cap_streams_once_intact() {
        let body = Full::new(Bytes::from(vec![7u8; 100]));
        let Ok(Prepared::Once(once)) = buffer(body, 99).await else { panic!("expected a streamed body") };
        let (data, _) = collect(once).await;
        assert_eq!(data.len(), 100);
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_still_arriving_is_not_waited_for() {
        use futures_util::StreamExt as _;
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![Ok(Frame::data(Bytes::from_static(b"x")))];
        // One frame there, then nothing yet (a client streaming, waiting for the response).
        let body = StreamBody::new(futures_util::stream::iter(frames).chain(futures_util::stream::pending()));
        let Ok(Prepared::Teed(mut once, tee)) = buffer(body, DEFAULT_REPLAY_CAP).await else {
            panic!("expected a teed body");
        };
        let first = once.frame().await.expect("the prefix").expect("a frame").into_data().expect("data");
        assert_eq!(&first[..], b"x", "what was read is sent first");
        assert!(tee.replay().is_none(), "the body has not ended: nothing to replay");
    }

    #[tokio::test]
    async fn a_teed_body_is_replayable_once_it_ended_within_the_cap() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let body = StreamBody::new(tokio_stream_from(rx));
        let Ok(Prepared::Teed(teed, tee)) = buffer(body, 8).await else { panic!("expected a teed body") };
        let sender = tokio::spawn(async move {
            for chunk in [&b"abc"[..], b"de"] {
                tx.send(Ok(Frame::data(Bytes::from_static(chunk)))).await.expect("send");
            }
        });
        let (data, _) = collect(teed).await;
        sender.await.expect("sender");
        assert_eq!(&data[..], b"abcde", "the first attempt gets the body as it came");
        let replay = tee.replay().expect("ended within the cap");
        for _ in 0..2 {
            assert_eq!(&collect(replay.body::<Empty<Bytes>>()).await.0[..], b"abcde");
        }

        // Over the cap: passed on intact, but no copy.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let Ok(Prepared::Teed(teed, tee)) = buffer(StreamBody::new(tokio_stream_from(rx)), 4).await else {
            panic!("expected a teed body")
        };
        tokio::spawn(async move {
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"abcdef")))).await;
        });
        assert_eq!(&collect(teed).await.0[..], b"abcdef");
        assert!(tee.replay().is_none(), "over the cap: no replay");
    }

    /// A stream of the receiver's items (what a client still sending looks like).
    fn tokio_stream_from<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_that_has_arrived_is_replayable() {
        // A unary gRPC request as hyper presents it: no length, the message and END_STREAM already there.
        let frames: Vec<Result<Frame<Bytes>, Infallible>> =
            vec![Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi")))];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let Ok(Prepared::Replayable(replay)) = buffer(body, DEFAULT_REPLAY_CAP).await else {
            panic!("expected a replayable body");
        };
        for _ in 0..2 {
            assert_eq!(&collect(replay.body::<Empty<Bytes>>()).await.0[..], b"\0\0\0\0\x02hi");
        }
        // Over the cap: sent once, intact.
        let frames: Vec<Result<Frame<Bytes>, Infallible>> =
            vec![Ok(Frame::data(Bytes::from_static(b"abc"))), Ok(Frame::data(Bytes::from_static(b"def")))];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let Ok(Prepared::Once(once)) = buffer(body, 4).await else { panic!("expected a streamed body") };
        assert_eq!(&collect(once).await.0[..], b"abcdef");
    }

    #[tokio::test]
    async fn a_lying_length_falls_back_to_streaming_with_the_prefix() {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> =
            vec![Ok(Frame::data(Bytes::from_static(b"abc"))), Ok(Frame::data(Bytes::from_static(b"def")))];
        let body = WithLength(StreamBody::new(futures_util::stream::iter(frames)), 2);
        let Ok(Prepared::Once(once)) = buffer(body, 4).await else { panic!("expected a streamed body") };
        assert_eq!(&collect(once).await.0[..], b"abcdef");
    }

    /// Gives a body an exact size hint, as hyper does for a request with Content-Length.
    struct WithLength<B>(B, u64);

    impl<B: Body + Unpin> Body for WithLength<B> {
        type Data = B::Data;
        type Error = B::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
            Pin::new(&mut self.0).poll_frame(cx)
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.1)
        }
    }
}
