//! Authentication: client certificates signed by the cluster CA (user from
//! CN, groups from O) and bearer tokens.

use x509_parser::prelude::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub username: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    pub fn admin() -> Self {
        UserInfo {
            username: "admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }
}

/// The user a verified client certificate names.
pub fn from_certificate(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let username = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".into());
    Some(UserInfo { username, groups })
}

/// The user a bearer token belongs to.
pub fn from_token(token: &str, admin_token: &str) -> Option<UserInfo> {
    (!admin_token.is_empty() && constant_time_eq(token.as_bytes(), admin_token.as_bytes()))
        .then(UserInfo::admin)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
