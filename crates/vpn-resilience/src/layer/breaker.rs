use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::{Layer, Service};
use vpn_api::{BreakerPermit, CircuitBreakerService};
use vpn_errors::VpnError;

use super::PeerRequest;

/// Puts each call under its destination peer's circuit breaker.
#[derive(Clone)]
pub struct BreakerLayer {
    breakers: Arc<dyn CircuitBreakerService>,
}

impl BreakerLayer {
    /// A layer over `breakers`.
    pub fn new(breakers: Arc<dyn CircuitBreakerService>) -> Self {
        Self { breakers }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Breaker<S> {
        Breaker { inner, breakers: self.breakers.clone() }
    }
}

/// The service made by [`BreakerLayer`]: refuses calls while the peer's breaker is open
/// (with a `CircuitOpen` network error, converted into the inner service's error type) and
/// records every outcome. A call dropped before it finished (cancelled, timed out) counts
/// as a failure.
#[derive(Clone)]
pub struct Breaker<S> {
    inner: S,
    breakers: Arc<dyn CircuitBreakerService>,
}

/// Records a failure for its permit unless told the outcome first.
struct Outcome {
    breakers: Arc<dyn CircuitBreakerService>,
    permit: Option<BreakerPermit>,
}

impl Outcome {
    fn record(mut self, success: bool) {
        if let Some(permit) = self.permit.take() {
            self.breakers.record(permit, success);
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.breakers.record(permit, false);
        }
    }
}

impl<S, Req> Service<Req> for Breaker<S>
where
    S: Service<Req>,
    S::Error: From<VpnError> + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    Req: PeerRequest,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let permit = match self.breakers.try_acquire(&req.peer()) {
            Ok(permit) => permit,
            Err(refused) => return Box::pin(std::future::ready(Err(refused.into()))),
        };
        let outcome = Outcome { breakers: self.breakers.clone(), permit: Some(permit) };
        let call = self.inner.call(req);
        Box::pin(async move {
            let result = call.await;
            outcome.record(result.is_ok());
            result
        })
    }
}
