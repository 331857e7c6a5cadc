use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::{Layer, Service, ServiceExt};
use vpn_api::RetryService;

use super::Retryable;

/// Retries failed calls on the schedule of a [`RetryService`].
#[derive(Clone)]
pub struct RetryLayer {
    retry: Arc<dyn RetryService>,
}

impl RetryLayer {
    /// A layer over `retry`.
    pub fn new(retry: Arc<dyn RetryService>) -> Self {
        Self { retry }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry { inner, retry: self.retry.clone() }
    }
}

/// The service made by [`RetryLayer`]: calls a clone of the inner service again with a
/// clone of the request until it succeeds or the schedule gives up, and returns the first
/// success or the last error. The schedule judges each error as the [`VpnError`](vpn_errors::VpnError) its
/// [`Retryable`] impl shows.
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    retry: Arc<dyn RetryService>,
}

impl<S, Req> Service<Req> for Retry<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Error: Retryable + Send,
    S::Future: Send,
    S::Response: Send,
    Req: Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        // Each attempt waits for its own clone to be ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let mut schedule = self.retry.schedule();
        let inner = self.inner.clone();
        Box::pin(async move {
            loop {
                let error = match inner.clone().oneshot(req.clone()).await {
                    Ok(response) => return Ok(response),
                    Err(error) => error,
                };
                match error.judged_as(|e| schedule.next_delay(e)) {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => return Err(error),
                }
            }
        })
    }
}
