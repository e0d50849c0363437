//! `modeld token`: the bearer tokens file.

use anyhow::bail;

pub(super) fn token(a: super::args::TokenArgs) -> anyhow::Result<()> {
    use super::args::TokenAction;
    use crate::auth::{Scope, Tokens};
    let mut tokens = Tokens::read(&a.tokens_file)?;
    match a.action {
        TokenAction::Create {
            name,
            scopes,
            expires_in_days,
        } => {
            let scopes = scopes
                .iter()
                .flat_map(|s| s.split(','))
                .map(Scope::parse)
                .collect::<crate::error::Result<Vec<_>>>()?;
            let expires = expires_in_days.map(|d| chrono::Utc::now() + chrono::Duration::days(i64::from(d)));
            let token = tokens.create(&name, &scopes, expires)?;
            tokens.write(&a.tokens_file)?;
            eprintln!(
                "token {name:?} ({}) recorded in {}; it is shown once, here:",
                scopes.iter().map(|s| s.name()).collect::<Vec<_>>().join(", "),
                a.tokens_file.display()
            );
            println!("{token}");
        }
        TokenAction::Revoke { name } => {
            if !tokens.revoke(&name) {
                bail!("no token named {name:?} in {}", a.tokens_file.display());
            }
            tokens.write(&a.tokens_file)?;
            println!("token {name:?} revoked");
        }
        TokenAction::List => {
            for e in tokens.entries() {
                let scopes: Vec<&str> = e.scopes.iter().map(|s| s.name()).collect();
                let expires = e.expires_at.map_or_else(|| "never".to_string(), |t| t.to_rfc3339());
                println!("{}  {}  expires {expires}", e.name, scopes.join(","));
            }
        }
    }
    Ok(())
}
