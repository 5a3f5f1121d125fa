//! The access policy file: roles and their grants, and the tokens and certificate subjects
//! that hold them.
//!
//! ```toml
//! [[role]]
//! name = "orders-app"
//! grants = [
//!   { keys = "orders/", access = "readwrite" },   # read and write keys under orders/
//!   { topics = "orders.", access = "write" },     # append to topics named orders.*
//!   { topics = "audit", access = "admin" },       # create and delete topics named audit*
//! ]
//!
//! [[role]]
//! name = "operator"
//! grants = [{ cluster = true, access = "admin" }] # everything, and the admin calls
//!
//! [[token]]
//! subject = "orders-service"                      # who, in logs and refusals
//! sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
//! roles = ["orders-app"]
//!
//! [[certificate]]
//! subject = "ringkv-router"                       # the client certificate's common name
//! roles = []
//! delegate = true                                 # a router: may forward its callers' names
//! ```
//!
//! `ringkv auth token --subject NAME --role ROLE` makes a token and prints its `[[token]]`
//! entry. Access is `read`, `write`, `readwrite` or `admin` (admin includes the other two; on
//! topics it also allows creating and deleting them). Every mistake is refused with the entry
//! it is in (an unknown role, a duplicate token, a grant on two things at once, a hash that is
//! not 64 hex digits), and a process keeps the policy it had when a reload finds one.

use crate::error::AuthError;
use crate::grant::{Access, Grant, Identity, On};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The largest policy file read: large enough for tens of thousands of tokens, small enough
/// that a wrong path (a disk image) is refused rather than read into memory.
pub const POLICY_BYTES_MAX: u64 = 8 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default, rename = "role")]
    roles: Vec<RoleSpec>,
    #[serde(default, rename = "token")]
    tokens: Vec<TokenSpec>,
    #[serde(default, rename = "certificate")]
    certificates: Vec<CertificateSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleSpec {
    name: String,
    #[serde(default)]
    grants: Vec<GrantSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantSpec {
    keys: Option<String>,
    topics: Option<String>,
    #[serde(default)]
    cluster: bool,
    access: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenSpec {
    subject: String,
    sha256: String,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateSpec {
    subject: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    delegate: bool,
}

/// A loaded policy: token hashes and certificate subjects to identities.
#[derive(Debug, Default)]
pub struct Policy {
    tokens: HashMap<String, Arc<Identity>>,
    certificates: HashMap<String, Arc<Identity>>,
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, AuthError> {
        Policy::load_with_text(path).map(|(p, _)| p)
    }

    /// [`Policy::load`], with the text it was parsed from (what a reload compares against).
    pub fn load_with_text(path: &Path) -> Result<(Policy, String), AuthError> {
        let err = |reason: String| AuthError::Policy { path: path.to_path_buf(), reason };
        let len = std::fs::metadata(path).map_err(|e| err(e.to_string()))?.len();
        if len > POLICY_BYTES_MAX {
            return Err(err(format!("{len} bytes is more than the {POLICY_BYTES_MAX} allowed")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Ok((Policy::parse(&text).map_err(err)?, text))
    }

    /// Parses and checks a policy; the error names the entry at fault.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut roles: HashMap<&str, Vec<Grant>> = HashMap::new();
        for role in &file.roles {
            let grants = role
                .grants
                .iter()
                .map(grant)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("role {:?}: {e}", role.name))?;
            if roles.insert(&role.name, grants).is_some() {
                return Err(format!("role {:?} is defined twice", role.name));
            }
        }
        let grants_of = |who: &str, names: &[String]| -> Result<Vec<Grant>, String> {
            let mut all = Vec::new();
            for n in names {
                let g = roles
                    .get(n.as_str())
                    .ok_or_else(|| format!("{who} has role {n:?}, which no [[role]] defines"))?;
                all.extend(g.iter().cloned());
            }
            Ok(all)
        };
        let mut policy = Policy::default();
        for t in &file.tokens {
            let who = format!("token of {:?}", t.subject);
            check_subject(&t.subject).map_err(|e| format!("{who}: {e}"))?;
            let hash = t.sha256.to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "{who}: sha256 must be 64 hex digits (the SHA-256 of the token, as `ringkv auth hash` prints it)"
                ));
            }
            let identity = Identity::new(&t.subject, grants_of(&who, &t.roles)?, false);
            if policy.tokens.insert(hash, Arc::new(identity)).is_some() {
                return Err(format!("{who}: the same token hash is listed twice"));
            }
        }
        for c in &file.certificates {
            let who = format!("certificate {:?}", c.subject);
            check_subject(&c.subject).map_err(|e| format!("{who}: {e}"))?;
            let identity = Identity::new(&c.subject, grants_of(&who, &c.roles)?, c.delegate);
            if policy.certificates.insert(c.subject.clone(), Arc::new(identity)).is_some() {
                return Err(format!("{who} is listed twice"));
            }
        }
        Ok(policy)
    }

    /// The identity a token gives (looked up by its hash).
    pub fn by_token(&self, token: &str) -> Option<Arc<Identity>> {
        self.tokens.get(&crate::token::hash_token(token)).cloned()
    }

    /// The identity a client certificate's subject (common name) gives.
    pub fn by_certificate(&self, subject: &str) -> Option<Arc<Identity>> {
        self.certificates.get(subject).cloned()
    }

    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }
}

/// The `[[token]]` entry that gives `token` to `subject` with `roles`, holding only the
/// token's hash: what `ringkv auth token` prints and every generated policy contains.
pub fn token_entry(subject: &str, token: &str, roles: &[&str]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| format!("{r:?}")).collect();
    format!(
        "[[token]]\nsubject = {subject:?}\nsha256 = \"{}\"\nroles = [{}]\n",
        crate::token::hash_token(token),
        roles.join(", ")
    )
}

fn grant(g: &GrantSpec) -> Result<Grant, String> {
    let access = Access::parse(&g.access).ok_or_else(|| {
        format!("access {:?} is not one of read, write, readwrite, admin", g.access)
    })?;
    let on = match (&g.keys, &g.topics, g.cluster) {
        (Some(k), None, false) => On::Keys(k.as_bytes().to_vec()),
        (None, Some(t), false) => On::Topics(t.clone()),
        (None, None, true) if access == Access::ADMIN => On::Cluster,
        (None, None, true) => {
            return Err("a grant on the cluster must be access = \"admin\"".into());
        }
        _ => {
            return Err(
                "a grant names exactly one of keys = \"prefix\", topics = \"prefix\", cluster = true"
                    .into(),
            );
        }
    };
    Ok(Grant { on, access })
}

/// Subjects travel in a header when a router forwards a caller (and appear in logs), so
/// they are short printable ASCII.
fn check_subject(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 256 || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("subject must be 1 to 256 printable ASCII characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::Need;
    use crate::token::hash_token;

    fn example() -> String {
        format!(
            r#"
            [[role]]
            name = "orders-app"
            grants = [{{ keys = "orders/", access = "readwrite" }}, {{ topics = "orders.", access = "write" }}]
            [[role]]
            name = "operator"
            grants = [{{ cluster = true, access = "admin" }}]
            [[token]]
            subject = "orders-service"
            sha256 = "{}"
            roles = ["orders-app"]
            [[token]]
            subject = "ops"
            sha256 = "{}"
            roles = ["operator"]
            [[certificate]]
            subject = "ringkv-router"
            delegate = true
            "#,
            hash_token("app-secret"),
            hash_token("ops-secret").to_uppercase(),
        )
    }

    #[test]
    fn tokens_and_certificates_map_to_their_roles() {
        let p = Policy::parse(&example()).unwrap();
        let app = p.by_token("app-secret").unwrap();
        assert_eq!(app.subject, "orders-service");
        assert!(app.allows(&Need::Key(b"orders/9", Access::WRITE)));
        assert!(!app.allows(&Need::Cluster));
        assert!(p.by_token("ops-secret").unwrap().superuser, "upper-case hex is accepted");
        assert!(p.by_token("guess").is_none());
        let router = p.by_certificate("ringkv-router").unwrap();
        assert!(router.delegate && router.grants.is_empty());
        assert!(p.by_certificate("someone").is_none());
    }

    #[test]
    fn a_token_entry_reads_back_as_its_subject_and_roles() {
        let text = "[[role]]\nname = \"r\"\ngrants = [{ keys = \"a/\", access = \"read\" }]\n"
            .to_string()
            + &token_entry("someone", "secret", &["r"]);
        let p = Policy::parse(&text).unwrap();
        let id = p.by_token("secret").unwrap();
        assert_eq!(id.subject, "someone");
        assert!(id.allows(&Need::Key(b"a/1", Access::READ)));
        assert!(!text.contains("secret\""), "only the hash is written");
    }

    #[test]
    fn mistakes_name_their_entry() {
        let cases = [
            ("[[token]]\nsubject = \"a\"\nsha256 = \"00\"", "64 hex digits"),
            (
                &format!(
                    "[[token]]\nsubject = \"a\"\nsha256 = \"{}\"\nroles = [\"x\"]",
                    hash_token("t")
                ),
                "has role \"x\", which no [[role]] defines",
            ),
            (
                "[[role]]\nname = \"r\"\ngrants = [{ keys = \"a\", topics = \"b\", access = \"read\" }]",
                "exactly one of",
            ),
            (
                "[[role]]\nname = \"r\"\ngrants = [{ keys = \"a\", access = \"all\" }]",
                "not one of read",
            ),
            (
                "[[role]]\nname = \"r\"\ngrants = [{ cluster = true, access = \"read\" }]",
                "must be access = \"admin\"",
            ),
            ("[[role]]\nname = \"r\"\n[[role]]\nname = \"r\"", "defined twice"),
            ("[[rol]]\nname = \"r\"", "unknown field"),
            ("[[certificate]]\nsubject = \"caf\u{e9}\"", "printable ASCII"),
        ];
        for (text, expect) in cases {
            let e = Policy::parse(text).unwrap_err();
            assert!(e.contains(expect), "{text}: {e}");
        }
        let twice = format!(
            "[[token]]\nsubject = \"a\"\nsha256 = \"{h}\"\n[[token]]\nsubject = \"b\"\nsha256 = \"{h}\"",
            h = hash_token("t")
        );
        assert!(Policy::parse(&twice).unwrap_err().contains("listed twice"));
    }
}
