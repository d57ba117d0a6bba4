//! The change log and its notifications: every mutating transaction records
//! the token id it changed (and, on PostgreSQL, `pg_notify`s it, delivered on
//! commit), so other replicas can refresh their Validate caches.

use std::time::Duration;

use sea_orm::{
    ActiveValue::Set, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, Statement,
};
use secrecy::ExposeSecret;

use super::{Store, entities::token_change};
use crate::{
    domain::TokenId,
    error::{Error, Result, StoreFault},
};

/// The NOTIFY channel. Payload: `<sequence number>:<token id>`, so a replica
/// applies each change once whether NOTIFY or the poll brings it first.
pub const CHANNEL: &str = "tokend_token_changes";

/// One committed change: token `token_id` changed, as log entry `seq`.
/// `token_id` is `None` for a row whose id does not parse (it still counts
/// for the follower's place in the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRow {
    pub seq: i64,
    pub token_id: Option<TokenId>,
}

#[derive(FromQueryResult)]
struct RawChange {
    seq: i64,
    token_id: String,
}

/// What the change feed says next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// A change was committed (NOTIFY): apply it if not seen yet.
    Changed(ChangeRow),
    /// The connection was lost and re-established by the driver: notices
    /// sent meanwhile are gone, so catch up from the log.
    Lost,
}

/// A dedicated LISTEN connection on the change channel (PostgreSQL). The
/// NOTIFY payload format is this module's business: callers get rows.
pub struct ChangeFeed(sea_orm::sqlx::postgres::PgListener);

impl ChangeFeed {
    /// The next event. An error means the connection failed: drop the feed
    /// and open a new one.
    pub async fn next(&mut self) -> Result<FeedEvent> {
        loop {
            match self.0.try_recv().await {
                Ok(Some(n)) => match parse_payload(n.payload()) {
                    Some(row) => return Ok(FeedEvent::Changed(row)),
                    None => tracing::warn!("ignoring a change notification that does not parse"),
                },
                Ok(None) => return Ok(FeedEvent::Lost),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// `<seq>:<token id>`, as `record` sends it.
fn parse_payload(payload: &str) -> Option<ChangeRow> {
    let (seq, id) = payload.split_once(':')?;
    Some(ChangeRow {
        seq: seq.parse().ok()?,
        token_id: Some(TokenId::parse(id)?),
    })
}

/// Records a change inside the mutation's transaction.
pub(super) async fn record(conn: &impl ConnectionTrait, origin: &str, id: TokenId) -> Result<()> {
    let seq = token_change::Entity::insert(token_change::ActiveModel {
        token_id: Set(id.to_string()),
        origin: Set(origin.to_owned()),
        ..Default::default()
    })
    .exec(conn)
    .await?
    .last_insert_id;
    if conn.get_database_backend() == DbBackend::Postgres {
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, $2)",
            [CHANNEL.into(), format!("{seq}:{id}").into()],
        ))
        .await?;
    }
    Ok(())
}

impl Store {
    /// Changes after `after_seq`, oldest first, at most `limit`, plus those of
    /// `gaps`: sequence numbers below `after_seq` not seen yet, which a
    /// transaction still in flight may commit late. PostgreSQL only: SQLite
    /// has a single replica.
    pub async fn changes_since(
        &self,
        after_seq: i64,
        gaps: &[i64],
        limit: u64,
    ) -> Result<Vec<ChangeRow>> {
        if self.backend() != DbBackend::Postgres {
            return Ok(Vec::new());
        }
        let sql = "SELECT seq, token_id FROM token_changes \
                   WHERE seq > $1 OR seq = ANY($2) ORDER BY seq LIMIT $3";
        let gaps: Vec<i64> = gaps.to_vec();
        self.bounded(async {
            let rows = RawChange::find_by_statement(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                [after_seq.into(), gaps.into(), (limit as i64).into()],
            ))
            .all(&self.db)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| ChangeRow {
                    seq: r.seq,
                    token_id: TokenId::parse(&r.token_id),
                })
                .collect())
        })
        .await
    }

    /// The highest sequence number in the log (0 when empty).
    pub async fn last_change_seq(&self) -> Result<i64> {
        if self.backend() != DbBackend::Postgres {
            return Ok(0);
        }
        #[derive(FromQueryResult)]
        struct Max {
            seq: i64,
        }
        self.bounded(async {
            let row = Max::find_by_statement(Statement::from_string(
                DbBackend::Postgres,
                "SELECT COALESCE(MAX(seq), 0)::bigint AS seq FROM token_changes",
            ))
            .one(&self.db)
            .await?;
            Ok(row.map_or(0, |r| r.seq))
        })
        .await
    }

    /// Deletes log rows older than `retention`.
    pub async fn prune_changes(&self, retention: Duration) -> Result<u64> {
        if self.backend() != DbBackend::Postgres {
            return Ok(0);
        }
        self.bounded(async {
            let r = self
                .db
                .execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "DELETE FROM token_changes WHERE at < now() - make_interval(secs => $1)",
                    [retention.as_secs_f64().into()],
                ))
                .await?;
            Ok(r.rows_affected())
        })
        .await
    }

    /// A dedicated LISTEN connection (not taken from the pool, so a busy pool
    /// never delays invalidations). PostgreSQL only.
    pub async fn listen(&self) -> Result<ChangeFeed> {
        let connect = async {
            let mut listener =
                sea_orm::sqlx::postgres::PgListener::connect(self.url.expose_secret()).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sea_orm::sqlx::Error>(listener)
        };
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(listener)) => Ok(ChangeFeed(listener)),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(Error::Unavailable(
                StoreFault::Timeout,
                "LISTEN connection timed out".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_or_are_refused() {
        let id = TokenId::parse("0123456789abcdef").map(|i| i.to_string());
        let id = id.as_deref().unwrap_or_default();
        assert_eq!(
            parse_payload(&format!("42:{id}")),
            Some(ChangeRow {
                seq: 42,
                token_id: TokenId::parse(id),
            })
        );
        for bad in ["", "42", ":abc", "x:0123456789abcdef", "42:not an id"] {
            assert_eq!(parse_payload(bad), None, "{bad:?}");
        }
    }
}
