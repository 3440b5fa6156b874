//! ServiceAccount tokens checked by the Kubernetes API (TokenReview).
//!
//! The API server verifies the signature, expiry, audience and (for projected
//! tokens) that the bound pod still exists; we only interpret its answer.
//! Note: a failed review is still HTTP 201, with `status.authenticated`
//! omitted (not `false`) and the reason in `status.error`.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use crate::token::{ServiceAccount, TokenError, TokenValidator};

/// How long one review may take before the caller is told to retry.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

pub struct TokenReviewer {
    api: Api<TokenReview>,
    audience: String,
}

impl TokenReviewer {
    /// `audience` is the one the proxies' projected tokens are minted for;
    /// a token for any other audience (including the API server's own) is
    /// refused, so a token stolen from another system cannot be replayed here.
    pub fn new(client: kube::Client, audience: impl Into<String>) -> Self {
        Self { api: Api::all(client), audience: audience.into() }
    }
}

impl TokenValidator for TokenReviewer {
    async fn validate(&self, token: &[u8]) -> Result<ServiceAccount, TokenError> {
        let token =
            std::str::from_utf8(token).map_err(|_| TokenError::Rejected("token is not UTF-8".into()))?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let reviewed = tokio::time::timeout(REVIEW_TIMEOUT, self.api.create(&PostParams::default(), &review))
            .await
            .map_err(|_| TokenError::Unavailable("TokenReview timed out".into()))?
            .map_err(|e| TokenError::Unavailable(format!("TokenReview failed: {e}")))?;
        interpret(reviewed, &self.audience)
    }
}

fn interpret(review: TokenReview, audience: &str) -> Result<ServiceAccount, TokenError> {
    let status =
        review.status.ok_or_else(|| TokenError::Unavailable("TokenReview response has no status".into()))?;
    if status.authenticated != Some(true) {
        return Err(TokenError::Rejected(status.error.unwrap_or_else(|| "not authenticated".to_owned())));
    }
    // The API server echoes the audiences the token is valid for; if it
    // answers at all, ours must be among them.
    if let Some(audiences) = &status.audiences {
        if !audiences.iter().any(|a| a == audience) {
            return Err(TokenError::Rejected(format!("token is valid for {audiences:?}, not {audience:?}")));
        }
    }
    let username = status
        .user
        .and_then(|u| u.username)
        .ok_or_else(|| TokenError::Rejected("authenticated token has no username".into()))?;
    parse_username(&username)
}

/// `system:serviceaccount:NAMESPACE:NAME`; any other user is refused: only
/// workloads get mesh identities.
fn parse_username(username: &str) -> Result<ServiceAccount, TokenError> {
    let rest = username
        .strip_prefix("system:serviceaccount:")
        .ok_or_else(|| TokenError::Rejected(format!("{username:?} is not a ServiceAccount")))?;
    match rest.split_once(':') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => {
            Ok(ServiceAccount { namespace: namespace.to_owned(), name: name.to_owned() })
        }
        _ => Err(TokenError::Rejected(format!("{username:?} is not a ServiceAccount"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert_eq!(
            parse_username("system:serviceaccount:emojivoto:web").unwrap().to_string(),
            "emojivoto/web"
        );
        assert!(parse_username("admin").is_err());
        assert!(parse_username("system:serviceaccount:emojivoto").is_err());
        assert!(parse_username("system:serviceaccount::web").is_err());
    }
}
