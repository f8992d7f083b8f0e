//! The storage helpers every domain module shares: random identifiers, the audit log and
//! the ledger's append. Nothing here imports a domain module, so accounts, BYOK and the
//! ledger all build on it without importing each other.

use crate::db::Tx;
use crate::error::AppError;
use opsgate_core::credentials::hex;
use rand::RngCore;

/// `bytes` random bytes from the OS, hex-encoded (identifiers and tokens).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    hex(&buf)
}

/// Appends one line to the audit log: who (`actor`) did what to which target.
pub async fn audit(
    tx: &mut Tx,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
    now: i64,
) -> Result<(), AppError> {
    sqlx::query(
        "INSERT INTO audit_log (actor, action, target, detail, at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(actor)
    .bind(action)
    .bind(target)
    .bind(detail)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The kind of a ledger line, as stored in `ledger.kind`. Balances recompute from these
/// lines: total = Σ grant; held = Σ hold − Σ charge − Σ release; used = Σ charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Credits added to (or, negative, removed from) an organisation's pool.
    Grant,
    /// A change to a user's allocation inside their organisation.
    Allocate,
    /// Credits set aside for a call in flight.
    Hold,
    /// What a settled or expired call cost (out of its hold).
    Charge,
    /// The part of a hold that was not charged, returned.
    Release,
}

impl EntryKind {
    pub const ALL: [EntryKind; 5] = [
        EntryKind::Grant,
        EntryKind::Allocate,
        EntryKind::Hold,
        EntryKind::Charge,
        EntryKind::Release,
    ];

    /// The stored form; the only place it is spelled.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Grant => "grant",
            EntryKind::Allocate => "allocate",
            EntryKind::Hold => "hold",
            EntryKind::Charge => "charge",
            EntryKind::Release => "release",
        }
    }

    pub fn parse(s: &str) -> Option<EntryKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Appends one line to the ledger (nothing for a zero amount): grants, allocations, holds,
/// charges and releases all go through here, so balances recompute from one table.
pub async fn ledger_entry(
    tx: &mut Tx,
    org_id: &str,
    user_id: Option<&str>,
    kind: EntryKind,
    amount: i64,
    hold_id: Option<&str>,
    now: i64,
) -> Result<(), AppError> {
    if amount == 0 {
        return Ok(());
    }
    sqlx::query("INSERT INTO ledger (org_id, user_id, kind, amount, hold_id, at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(org_id)
        .bind(user_id)
        .bind(kind.as_str())
        .bind(amount)
        .bind(hold_id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::EntryKind;

    #[test]
    fn entry_kinds_round_trip() {
        for k in EntryKind::ALL {
            assert_eq!(EntryKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EntryKind::parse("refund"), None);
    }
}
