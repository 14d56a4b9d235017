//! The built-in remediator: the controller's own actions on the engine (today's repairs).
//! Finishes inside the reconcile; acts only on containers it owns.

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::docker::DockerError;
use crate::docker::actions::Actions;
use crate::remediation::{
    Action, Actor, Dispatch, RemediationError, RemediationRequest, Remediator,
};

pub struct BuiltIn {
    actions: Actions,
}

impl BuiltIn {
    pub fn new(actions: Actions) -> Self {
        BuiltIn { actions }
    }

    async fn perform(&self, req: RemediationRequest<'_>) -> Result<(), RemediationError> {
        let actions = &self.actions;
        let (cluster, service) = (req.cluster, req.service);
        let action = req.action.ok_or(RemediationError::NoAction)?;
        // Every action but a create needs the container this service owns.
        let id = || {
            req.container
                .map(|c| c.id.as_str())
                .ok_or_else(|| DockerError::NotOwned {
                    name: service.name.clone(),
                })
        };
        Ok(match action {
            Action::Create => actions.create(cluster, service).await,
            Action::Start => actions.start(id()?).await,
            Action::Unpause => actions.unpause(id()?).await,
            Action::Restart => actions.restart(id()?, service).await,
            Action::Recreate => actions.recreate(cluster, service, id()?).await,
            Action::Connect { network } => {
                actions
                    .connect(
                        cluster,
                        id()?,
                        network,
                        crate::docker::spec::network_aliases(service),
                    )
                    .await
            }
            Action::RecreateNetwork { .. } => actions.recreate_network(cluster).await,
        }?)
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
