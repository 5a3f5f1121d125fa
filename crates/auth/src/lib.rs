//! Who may do what: authentication and authorization for ringkv's client APIs.
//!
//! **Identities.** A caller proves who it is with a bearer token (`authorization: Bearer
//! <token>`, what `ringkv --token` and `ClientBuilder::token` send) or, over mutual TLS, with
//! its client certificate (its common name is the subject). Nodes are known by their node
//! certificate (see `ringkv_tls::Tls::is_peer`) and may do everything: a node can speak
//! Raft, so no grant could hold it back.
//!
//! **The policy file** ([`policy`]) maps tokens and certificate subjects to roles, and roles
//! to grants: `read`, `write`, `readwrite` or `admin` on a key prefix or a topic-name prefix,
//! or `admin` on the cluster (the operator: everything, including leader transfer, snapshots
//! and node drain/remove). Tokens are stored as their SHA-256, never in the clear: a leaked
//! policy file (a Kubernetes Secret read by the wrong pod) does not leak credentials. The file
//! is re-read while the process runs, so revoking a token needs no restart.
//!
//! **Where it is checked.** In every router *and* every node: the router checks first (so a
//! refused call costs the cluster nothing) and forwards the caller's credential on every call
//! it makes for it ([`forward`]); the node checks again itself, so it never trusts a router
//! blindly. A caller known by a client certificate is forwarded by name
//! ([`CALLER_SUBJECT_HEADER`]), which a node honours only from a connection whose own
//! certificate is a node's or is marked `delegate` in the policy (a router's).
//!
//! **What each call needs** is one table, [`needs`], shared by router and node, so the two
//! cannot disagree: a request type maps to the grants it needs (a put needs write on its key;
//! a scan read on its whole range; creating a topic admin on it; a leader transfer admin on
//! the cluster). Refusals are `UNAUTHENTICATED` (no credential, or one this cluster does not
//! know) and `PERMISSION_DENIED` (known, without the grant), with reason, subject and the
//! missing grant in the status details ([`AuthError`]).
//!
//! Without a policy file authorization is off (the default, and `ringkv dev`): every caller
//! may do everything, as before. Turning it on requires TLS, since bearer tokens must not
//! cross the network in the clear.

mod authenticator;
mod error;
pub mod forward;
mod grant;
pub mod needs;
pub mod policy;
mod token;

pub use authenticator::{Auth, Caller, Side, caller};
pub use error::AuthError;
pub use forward::{AuthChannel, CALLER_SUBJECT_HEADER, Forward};
pub use grant::{Access, Grant, Identity, Need, On, prefix_end};
pub use needs::Guarded;
pub use policy::Policy;
pub use token::{Token, generate_token, hash_token};

/// Checks that the caller of `req` (set by [`Auth::interceptor`]) holds every grant the
/// request needs, per the [`needs`] table: what every handler of a client API calls first.
pub fn authorize<T: Guarded>(req: &tonic::Request<T>) -> Result<std::sync::Arc<Caller>, AuthError> {
    let caller = caller(req)?;
    caller.require(T::RPC, req.get_ref())?;
    Ok(caller)
}
