//! The built-in remediator: the controller's own actions on the engine (today's repairs).
//! Finishes inside the reconcile; acts only on containers it owns.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::engine::Engine;
use crate::remediation::{Actor, Dispatch, RemediationError, RemediationRequest, Remediator};

pub struct BuiltIn {
    engine: Arc<dyn Engine>,
}

impl BuiltIn {
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        BuiltIn { engine }
    }

    async fn perform(&self, req: RemediationRequest<'_>) -> Result<(), RemediationError> {
        let action = req.action.ok_or(RemediationError::NoAction)?;
        Ok(self
            .engine
            .act(req.cluster, req.service, action, req.container)
            .await?)
    }
}

impl Remediator for BuiltIn {
    fn actor(&self) -> Actor {
        Actor::Controller
    }

    fn remediate<'a>(&'a self, request: RemediationRequest<'a>) -> BoxFuture<'a, Dispatch> {
        async move { Dispatch::Done(self.perform(request).await) }.boxed()
    }
}
