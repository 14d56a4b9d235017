//! One engine call, bounded, with the two answers that callers treat as outcomes rather
//! than failures told apart: 404 (no such thing) and 409 (conflict).
//!
//! Every call of [`Actions`](super::actions::Actions) goes through [`call`], so that each
//! one has a time limit and every failure reads the same way (`failed to <doing>: ...`,
//! `timed out after Ns while trying to <doing>`).

use std::future::Future;
use std::time::Duration;

use super::DockerError;

/// What the engine answered to a call that did not fail outright.
///
/// 404 and 409 carry the [`DockerError::Api`] they would be as failures, so a caller that
/// does not expect them (see [`Answer::required`]) reports them like any other error.
#[derive(Debug)]
pub(super) enum Answer<T> {
    Ok(T),
    /// 404: no such container, image or network.
    NotFound(DockerError),
    /// 409: a name already taken, or a container in the wrong state for the call.
    Conflict(DockerError),
}

impl<T> Answer<T> {
    /// The value; 404 and 409 are failures like any other.
    pub(super) fn required(self) -> Result<T, DockerError> {
        match self {
            Answer::Ok(value) => Ok(value),
            Answer::NotFound(e) | Answer::Conflict(e) => Err(e),
        }
    }

    /// The value, or `None` when the engine has no such thing; 409 is a failure.
    pub(super) fn found(self) -> Result<Option<T>, DockerError> {
        match self {
            Answer::Ok(value) => Ok(Some(value)),
            Answer::NotFound(_) => Ok(None),
            Answer::Conflict(e) => Err(e),
        }
    }
}

/// Runs `fut` (one engine request of operation `op`, counted), giving up after `limit`.
/// `doing` completes "failed to ..." and "while trying
/// to ..." in the error.
///
/// # Errors
/// [`DockerError::Timeout`] when `limit` passes first; [`DockerError::Api`] for any
/// engine error other than 404 and 409, which come back as [`Answer`]s.
pub(super) async fn call<T>(
    op: &'static str,
    doing: impl Into<String>,
    limit: Duration,
    fut: impl Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<Answer<T>, DockerError> {
    crate::metrics::engine_request(op);
    let doing = doing.into();
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(value)) => Ok(Answer::Ok(value)),
        Ok(Err(e)) if is_not_found(&e) => Ok(Answer::NotFound(DockerError::api(doing, e))),
        Ok(Err(e)) if is_conflict(&e) => Ok(Answer::Conflict(DockerError::api(doing, e))),
        Ok(Err(source)) => Err(DockerError::api(doing, source)),
        Err(_) => Err(DockerError::Timeout {
            doing,
            seconds: limit.as_secs(),
        }),
    }
}

/// True when the engine answered 404 (no such container/image/network).
pub(crate) fn is_not_found(e: &bollard::errors::Error) -> bool {
    status(e) == Some(404)
}

/// True when the engine answered 409 (name conflict, or the container is in the wrong state).
fn is_conflict(e: &bollard::errors::Error) -> bool {
    status(e) == Some(409)
}

fn status(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine_error(status_code: u16) -> bollard::errors::Error {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message: "no".into(),
        }
    }

    async fn answer(status_code: u16) -> Result<Answer<()>, DockerError> {
        call(
            "start",
            "start container x",
            Duration::from_secs(1),
            async move { Err(engine_error(status_code)) },
        )
        .await
    }

    #[tokio::test]
    async fn not_found_and_conflict_are_answers_and_other_errors_are_failures() {
        assert!(matches!(answer(404).await, Ok(Answer::NotFound(_))));
        assert!(matches!(answer(409).await, Ok(Answer::Conflict(_))));
        let err = answer(500).await.unwrap_err();
        assert!(
            err.to_string().starts_with("failed to start container x: "),
            "{err}"
        );
    }

    #[tokio::test]
    async fn required_turns_404_and_409_into_the_api_error() {
        for code in [404, 409] {
            let err = answer(code)
                .await
                .expect("an answer")
                .required()
                .unwrap_err();
            assert!(matches!(err, DockerError::Api { .. }), "{err:?}");
            assert!(err.to_string().starts_with("failed to start container x: "));
        }
    }

    #[tokio::test]
    async fn found_makes_404_none_and_keeps_409_an_error() {
        assert!(
            answer(404)
                .await
                .expect("an answer")
                .found()
                .expect("ok")
                .is_none()
        );
        assert!(answer(409).await.expect("an answer").found().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_limit_is_a_timeout_naming_what_it_was_doing() {
        let never = std::future::pending::<Result<(), bollard::errors::Error>>();
        let err = call(
            "image-inspect",
            "inspect image busybox",
            Duration::from_secs(60),
            never,
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "timed out after 60s while trying to inspect image busybox"
        );
    }
}
