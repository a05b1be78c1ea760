//! A guard between the gRPC channel and tonic: every Pub/Sub response loses its
//! `grpc-status-details-bin` header and trailer before tonic reads them.
//!
//! tonic 0.14 decodes that value with `expect` when it builds a `Status` from a response
//! (`Status::from_header_map`), so a value that is not base64 (a misbehaving server or proxy,
//! found by the `pubsub_trailers` fuzz target) panics the task reading the Subscribe stream
//! instead of failing the call (upstream: grpc/grpc-rust pull request 2618). The client never
//! reads the status details (the code, the message and Salesforce's `error-code` trailer say
//! everything it acts on), so dropping them loses nothing.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::TryFutureExt as _;
use http_body::{Body, Frame, SizeHint};
use tonic::codegen::{http, Service};

/// The status-details header (`google.rpc.Status`, base64) tonic would decode.
pub const GRPC_STATUS_DETAILS: &str = "grpc-status-details-bin";

/// Removes the status details from response headers or trailers: what [`StripStatusDetails`]
/// does to every response, so that building a `tonic::Status` from them cannot panic.
pub fn strip_status_details(headers: &mut http::HeaderMap) {
    headers.remove(GRPC_STATUS_DETAILS);
}

/// A service wrapper (around the tonic `Channel`) applying [`strip_status_details`] to every
/// response's headers (a trailers-only answer carries its status there) and trailers.
#[derive(Debug, Clone)]
pub struct StripStatusDetails<S> {
    inner: S,
}

impl<S> StripStatusDetails<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for StripStatusDetails<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<StrippedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        Box::pin(self.inner.call(request).map_ok(|response| {
            let (mut parts, body) = response.into_parts();
            strip_status_details(&mut parts.headers);
            http::Response::from_parts(parts, StrippedBody { inner: body })
        }))
    }
}

/// A response body whose trailers pass through [`strip_status_details`].
#[derive(Debug)]
pub struct StrippedBody<B> {
    inner: B,
}

impl<B: Body + Unpin> Body for StrippedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &mut polled {
            if let Some(trailers) = frame.trailers_mut() {
                strip_status_details(trailers);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// The input the fuzz target found: tonic panics on it unless the details are stripped.
    fn trailers_with_bad_details() -> http::HeaderMap {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("16"));
        trailers.insert("grpc-message", http::HeaderValue::from_static("auth error"));
        trailers.insert(
            "error-code",
            http::HeaderValue::from_static("sfdc.platform.eventbus.grpc.service.auth.error"),
        );
        trailers.insert(
            GRPC_STATUS_DETAILS,
            http::HeaderValue::from_static("CAcSBmRl.mllZA"),
        );
        trailers
    }

    #[test]
    fn unreadable_status_details_no_longer_reach_tonic() {
        let raw = trailers_with_bad_details();
        // The upstream defect this guards against: still there means the guard is still needed.
        assert!(std::panic::catch_unwind(|| tonic::Status::from_header_map(&raw)).is_err());
        let mut trailers = raw;
        strip_status_details(&mut trailers);
        let status = tonic::Status::from_header_map(&trailers);
        let err = crate::pubsub::PubSubError::from_status(status.expect("a status"));
        assert!(err.is_auth_rejected());
        assert_eq!(
            err.error_code(),
            Some("sfdc.platform.eventbus.grpc.service.auth.error")
        );
    }

    type Frames = futures::stream::Iter<
        std::vec::IntoIter<Result<Frame<bytes::Bytes>, std::convert::Infallible>>,
    >;

    /// A server answering every call with the bad details in its headers and its trailers.
    struct BadDetails;

    impl Service<http::Request<()>> for BadDetails {
        type Response = http::Response<http_body_util::StreamBody<Frames>>;
        type Error = std::convert::Infallible;
        type Future = futures::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let trailers = trailers_with_bad_details();
            let frames = vec![
                Ok(Frame::data(bytes::Bytes::from_static(b"x"))),
                Ok(Frame::trailers(trailers.clone())),
            ];
            let mut response = http::Response::new(http_body_util::StreamBody::new(
                futures::stream::iter(frames),
            ));
            *response.headers_mut() = trailers;
            futures::future::ready(Ok(response))
        }
    }

    #[tokio::test]
    async fn the_guard_strips_headers_and_trailers_of_every_response() {
        use http_body_util::BodyExt as _;
        let mut guarded = StripStatusDetails::new(BadDetails);
        let response = guarded.call(http::Request::new(())).await.unwrap();
        assert!(response.headers().get(GRPC_STATUS_DETAILS).is_none());
        assert_eq!(response.headers().get("grpc-status").unwrap(), "16");
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        assert!(trailers.get(GRPC_STATUS_DETAILS).is_none());
        assert_eq!(
            trailers.get("error-code").unwrap(),
            "sfdc.platform.eventbus.grpc.service.auth.error"
        );
    }
}
