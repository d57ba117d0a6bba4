//! Search: one page of tokens, newest first (`created_at DESC, id DESC`, keyset
//! pagination), and the total of a search, served from indexes on both backends.
//!
//! Matching: a name matches when its fold (`store::fold`: per-character Unicode
//! simple case folding) contains the query's fold, every character taken
//! literally. A module filter matches a module name exactly.
//!
//! Every plan walks an index, or a name index's matches:
//!
//! - **Tokens**: an index of `tokens` in (account | account+owner | owner |
//!   platform-wide, created) order, read newest first until a page is full;
//!   other filters are checked on the rows read.
//! - **Modules**: `token_modules` in (account, module, created) or
//!   (module, created) order, each entry joined to its token by primary key.
//! - **Fts** (SQLite): the FTS5 trigram index's matches of the name, joined
//!   to their tokens by rowid, filtered and sorted. The index's pending list
//!   (renamed tokens it has not folded in yet, migration 000009) is read
//!   beside it: a pending token's FTS entry is ignored and its current name
//!   checked instead (`name_matches`), so results are exact however much is
//!   pending. Chosen when the name has
//!   at most [`FTS_DRIVE_MAX`] matches; a commoner name is found sooner by an
//!   ordered walk that checks each row (`GLOB` with case classes). PostgreSQL's
//!   planner makes the same choice itself between its pg_trgm index on
//!   `tokend_fold(name)` and the ordered indexes.
//!
//! Queries shorter than a trigram (1-2 characters) cannot use a name index on
//! either backend; they are checked on the rows of the ordered walk.

use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, Iterable,
    sea_query::{Alias, Expr, ExprTrait, Func, LikeExpr, Order, Query, SelectStatement, UnionType},
};
use sea_orm_migration::prelude::DeriveIden;

use super::{Store, convert::token_from_model, entities::token, fold};
use crate::{
    domain::{Token, TokenId, TokenState, page::TokenCursor, privilege::Scope},
    error::Result,
};

/// A Search, already authorised and validated.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    pub scope: Option<Scope>,
    pub account_id: Option<String>,
    pub name_contains: Option<String>,
    pub id: Option<TokenId>,
    pub states: Vec<TokenState>,
    pub owner_id: Option<String>,
    pub created_by: Option<String>,
    pub module: Option<String>,
    pub created_after: Option<chrono::DateTime<chrono::Utc>>,
    pub created_before: Option<chrono::DateTime<chrono::Utc>>,
    pub last_used_before: Option<chrono::DateTime<chrono::Utc>>,
    pub last_used_after: Option<chrono::DateTime<chrono::Utc>>,
    pub expires_before: Option<chrono::DateTime<chrono::Utc>>,
    /// Also finds tokens that never expire.
    pub expires_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Tokens whose expiry breaks a policy (`ExpiryBreach`).
    pub breaks: Option<ExpiryBreach>,
    /// Only IP-bound tokens (`Some(true)`: `allowed_cidrs IS NOT NULL`) or
    /// only unbound ones. Checked on the row the other filters reach, like
    /// the expiry filters: a token's binding is no index's leading column.
    pub bound: Option<bool>,
    pub after: Option<TokenCursor>,
    pub limit: u64,
}

/// The expiries that break a policy: none at all (when one is required),
/// or one later than `later_than`. Neither set: nothing breaks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryBreach {
    pub missing: bool,
    pub later_than: Option<chrono::DateTime<chrono::Utc>>,
}

/// SQLite: the most name matches the Fts plan looks up and sorts (a few ms);
/// past this an ordered walk reaches a page of matches sooner.
pub const FTS_DRIVE_MAX: u64 = 4000;

/// What `Store::explain_search` found: for the page and for the count, the
/// statement (values inlined) followed by the database's plan, a step per line.
#[derive(Debug, Clone)]
pub struct SearchPlans {
    pub page: Vec<String>,
    pub count: Vec<String>,
}

#[derive(DeriveIden)]
enum TokenModules {
    Table,
    AccountId,
    Module,
    CreatedAt,
    TokenId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    Tokens,
    Modules,
    Fts,
}

/// How the name filter is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameForm {
    /// SQLite, Fts plan: the name's exact matches are the FROM
    /// (`name_matches`), so no condition is left.
    FtsJoin,
    /// SQLite, counting many matches: the FTS matches as a set probed by rowid.
    FtsSet,
    /// SQLite, checked per row: `name GLOB ?` with case classes.
    Glob,
    /// PostgreSQL: `tokend_fold(name) LIKE ?` (pg_trgm index or per row).
    PgLike,
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    driver: Driver,
    name: Option<NameForm>,
}

/// Escapes LIKE wildcards so user text matches literally (escape character `\`).
fn like_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// An FTS5 query matching the text as one phrase: with the trigram
/// tokenizer, exactly the rows whose folded name contains the folded text.
fn fts_phrase(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

fn scope_condition(scope: &Scope) -> Condition {
    use token::Column as C;
    match scope {
        Scope::Everything => Condition::all(),
        Scope::Account(a) => Condition::all().add(C::AccountId.eq(a.as_str())),
        Scope::Owner {
            account_id,
            owner_id,
        } => Condition::all()
            .add(C::AccountId.eq(account_id.as_str()))
            .add(C::OwnerId.eq(owner_id.as_str())),
    }
}

/// The account every result must be in, if the query fixes one.
fn fixed_account(q: &SearchQuery) -> Option<&str> {
    match &q.scope {
        Some(Scope::Account(a)) => Some(a.as_str()),
        Some(Scope::Owner { account_id, .. }) => Some(account_id.as_str()),
        _ => q.account_id.as_deref(),
    }
}

fn tm(col: TokenModules) -> Expr {
    Expr::col((TokenModules::Table, col))
}

fn tokens_col(col: token::Column) -> Expr {
    Expr::col((token::Entity, col))
}

impl Plan {
    /// The (created_at, id) columns this plan's order is read from.
    fn order_columns(&self) -> (Expr, Expr) {
        match self.driver {
            Driver::Modules => (tm(TokenModules::CreatedAt), tm(TokenModules::TokenId)),
            _ => (
                tokens_col(token::Column::CreatedAt),
                tokens_col(token::Column::Id),
            ),
        }
    }

    /// Does this plan need the `tokens` row beyond what `token_modules` holds?
    fn needs_token_row(&self, q: &SearchQuery) -> bool {
        self.driver != Driver::Modules
            || self.name.is_some()
            || q.id.is_some()
            || !q.states.is_empty()
            || q.owner_id.is_some()
            || q.created_by.is_some()
            || q.last_used_before.is_some()
            || q.last_used_after.is_some()
            || q.expires_before.is_some()
            || q.expires_after.is_some()
            || q.breaks.is_some()
            || q.bound.is_some()
            || matches!(q.scope, Some(Scope::Owner { .. }))
    }

    /// Every filter of `q` as one condition; the page cursor too when `paged`.
    fn condition(&self, q: &SearchQuery, paged: bool) -> Condition {
        use token::Column as C;
        let modules = self.driver == Driver::Modules;
        let joined = self.needs_token_row(q);
        let mut cond = Condition::all();
        if modules {
            // token_modules holds the account and the creation time.
            if let Some(a) = fixed_account(q) {
                cond = cond.add(tm(TokenModules::AccountId).eq(a));
            }
            if let Some(a) = &q.account_id {
                cond = cond.add(tm(TokenModules::AccountId).eq(a.as_str()));
            }
            if let Some(m) = &q.module {
                cond = cond.add(tm(TokenModules::Module).eq(m.as_str()));
            }
        }
        if joined {
            if let Some(scope) = &q.scope {
                cond = cond.add(scope_condition(scope));
            }
            if let Some(a) = &q.account_id {
                cond = cond.add(C::AccountId.eq(a.as_str()));
            }
            if !q.states.is_empty() {
                cond = cond.add(C::State.is_in(q.states.iter().map(|s| s.as_str())));
            }
        }
        if let Some(id) = q.id {
            cond = cond.add(C::Id.eq(id.to_string()));
        }
        if let (Some(text), Some(form)) = (&q.name_contains, self.name)
            && let Some(name) = name_condition(text, form)
        {
            cond = cond.add(name);
        }
        if let Some(o) = &q.owner_id {
            cond = cond.add(C::OwnerId.eq(o.as_str()));
        }
        if let Some(c) = &q.created_by {
            cond = cond.add(C::CreatedBy.eq(c.as_str()));
        }
        if let (Some(m), false) = (&q.module, modules) {
            // The token's entry in token_modules, found by its primary key.
            let mut entry = Query::select();
            entry
                .expr(Expr::val(1))
                .from(TokenModules::Table)
                .and_where(tm(TokenModules::AccountId).equals((token::Entity, C::AccountId)))
                .and_where(tm(TokenModules::Module).eq(m.as_str()))
                .and_where(tm(TokenModules::CreatedAt).equals((token::Entity, C::CreatedAt)))
                .and_where(tm(TokenModules::TokenId).equals((token::Entity, C::Id)));
            cond = cond.add(Expr::exists(entry));
        }
        let (created, id) = self.order_columns();
        if let Some(t) = q.created_after {
            cond = cond.add(created.clone().gte(t));
        }
        if let Some(t) = q.created_before {
            cond = cond.add(created.clone().lt(t));
        }
        if let Some(t) = q.last_used_before {
            // "Stale": not used since `t`, including never used.
            cond = cond.add(
                Condition::any()
                    .add(C::LastUsedAt.is_null())
                    .add(C::LastUsedAt.lt(t)),
            );
        }
        if let Some(t) = q.last_used_after {
            cond = cond.add(C::LastUsedAt.gte(t));
        }
        if let Some(t) = q.expires_before {
            cond = cond.add(C::ExpiresAt.lt(t));
        }
        if let Some(t) = q.expires_after {
            cond = cond.add(
                Condition::any()
                    .add(C::ExpiresAt.is_null())
                    .add(C::ExpiresAt.gte(t)),
            );
        }
        if let Some(b) = q.breaks {
            let mut any = Condition::any();
            if b.missing {
                any = any.add(C::ExpiresAt.is_null());
            }
            if let Some(t) = b.later_than {
                any = any.add(C::ExpiresAt.gt(t));
            }
            if !b.missing && b.later_than.is_none() {
                // A policy without expiry rules: nothing breaks it.
                any = any.add(Expr::val(1).eq(0));
            }
            cond = cond.add(any);
        }
        match q.bound {
            Some(true) => cond = cond.add(C::AllowedCidrs.is_not_null()),
            Some(false) => cond = cond.add(C::AllowedCidrs.is_null()),
            None => {}
        }
        if let (Some(after), true) = (&q.after, paged) {
            // The first bound lets the index range start at the cursor.
            cond = cond.add(created.clone().lte(after.created_at)).add(
                Condition::any()
                    .add(created.clone().lt(after.created_at))
                    .add(
                        Condition::all()
                            .add(created.eq(after.created_at))
                            .add(id.lt(after.id.to_string())),
                    ),
            );
        }
        cond
    }

    /// The FROM clause (and the join of a plan's index to `tokens`, which a
    /// page always needs and a count only for filters on other columns).
    fn from(&self, q: &SearchQuery, page: bool, select: &mut SelectStatement) {
        match self.driver {
            Driver::Tokens => {
                select.from(token::Entity);
            }
            Driver::Modules => {
                select.from(TokenModules::Table);
                if page || self.needs_token_row(q) {
                    select.inner_join(
                        token::Entity,
                        tokens_col(token::Column::Id)
                            .equals((TokenModules::Table, TokenModules::TokenId)),
                    );
                }
            }
            Driver::Fts => {
                // CROSS JOIN keeps the name's matches as the outer loop.
                let text = q.name_contains.as_deref().unwrap_or_default();
                select
                    .from_subquery(name_matches(text), Alias::new("name_matches"))
                    .cross_join(token::Entity)
                    .and_where(Expr::cust(
                        "\"tokens\".\"rowid\" = \"name_matches\".\"token_rowid\"",
                    ));
            }
        }
    }

    fn page(&self, q: &SearchQuery) -> SelectStatement {
        let mut select = Query::select();
        select.columns(token::Column::iter().map(|c| (token::Entity, c)));
        self.from(q, true, &mut select);
        let (created, id) = self.order_columns();
        select
            .cond_where(self.condition(q, true))
            .order_by_expr(created, Order::Desc)
            .order_by_expr(id, Order::Desc)
            .limit(q.limit);
        select
    }

    fn count(&self, q: &SearchQuery) -> SelectStatement {
        let mut select = Query::select();
        select.expr(Func::count(Expr::cust("*")));
        self.from(q, false, &mut select);
        select.cond_where(self.condition(q, false));
        select
    }
}

/// SQLite: the rowids (as `token_rowid`) of the tokens whose names contain
/// `text`, exactly: the FTS index's matches, except the tokens it has pending
/// (migration 000009: it may hold an earlier name for them, or none), and the
/// pending tokens whose current name matches, checked one by one.
fn name_matches(text: &str) -> SelectStatement {
    let mut pending = Query::select();
    pending
        .column(Alias::new("token_rowid"))
        .from(Alias::new("tokens_name_fts_pending"));
    let mut renamed = pending.clone();
    renamed.and_where(Expr::cust_with_values(
        "(SELECT \"name\" FROM \"tokens\" WHERE \"tokens\".\"rowid\" = \"tokens_name_fts_pending\".\"token_rowid\") GLOB ?",
        [fold::sqlite_glob(text)],
    ));
    let mut matches = Query::select();
    matches
        .expr_as(Expr::cust("\"rowid\""), Alias::new("token_rowid"))
        .from(Alias::new("tokens_name_fts"))
        .and_where(Expr::cust_with_values(
            "\"tokens_name_fts\" MATCH ?",
            [fts_phrase(text)],
        ))
        .union(UnionType::Except, pending)
        .union(UnionType::Distinct, renamed);
    matches
}

/// The name filter, where it is a condition (the Fts plan's is its FROM).
fn name_condition(text: &str, form: NameForm) -> Option<Expr> {
    Some(match form {
        NameForm::FtsJoin => return None,
        // `+` keeps SQLite from driving the count by rowid: the set is large.
        NameForm::FtsSet => Expr::cust("+\"tokens\".\"rowid\"").in_subquery(name_matches(text)),
        NameForm::Glob => {
            Expr::cust_with_values("\"tokens\".\"name\" GLOB ?", [fold::sqlite_glob(text)])
        }
        NameForm::PgLike => Expr::cust("tokend_fold(\"tokens\".\"name\")")
            .like(LikeExpr::new(format!("%{}%", like_literal(&fold::fold_str(text)))).escape('\\')),
    })
}

impl Store {
    /// One page of tokens, newest first (`limit` rows at most).
    pub async fn search_tokens(&self, q: &SearchQuery) -> Result<Vec<Token>> {
        self.bounded(async {
            let Some(plan) = self.plan(q, false).await? else {
                return Ok(Vec::new());
            };
            let statement = self.backend().build(&plan.page(q));
            let models = token::Entity::find()
                .from_raw_sql(statement)
                .all(&self.db)
                .await?;
            models.into_iter().map(token_from_model).collect()
        })
        .await
    }

    /// How many tokens match `q`'s filters, ignoring its cursor and limit.
    pub async fn count_tokens(&self, q: &SearchQuery) -> Result<u64> {
        self.bounded(async {
            let Some(plan) = self.plan(q, true).await? else {
                return Ok(0);
            };
            let statement = self.backend().build(&plan.count(q));
            let count: i64 = match self.db.query_one_raw(statement).await? {
                Some(row) => row.try_get_by_index(0)?,
                None => 0,
            };
            Ok(u64::try_from(count).unwrap_or(0))
        })
        .await
    }

    /// The database's plans for a Search's page and for its count, one line
    /// per plan step (`EXPLAIN QUERY PLAN` on SQLite, `EXPLAIN` on
    /// PostgreSQL), with the statements' real parameters. For tests and
    /// benchmarks that prove which indexes serve a search.
    pub async fn explain_search(&self, q: &SearchQuery) -> Result<Option<SearchPlans>> {
        let Some(plan) = self.plan(q, false).await? else {
            return Ok(None);
        };
        let count_plan = self.plan(q, true).await?.unwrap_or(plan);
        let backend = self.backend();
        let mut explained = Vec::new();
        for statement in [
            backend.build(&plan.page(q)),
            backend.build(&count_plan.count(q)),
        ] {
            let (prefix, column) = match backend {
                DbBackend::Postgres => ("EXPLAIN ", "QUERY PLAN"),
                _ => ("EXPLAIN QUERY PLAN ", "detail"),
            };
            let explain = sea_orm::Statement {
                sql: format!("{prefix}{}", statement.sql),
                ..statement.clone()
            };
            let mut lines = vec![statement.to_string()];
            for row in self.db.query_all_raw(explain).await? {
                lines.push(row.try_get::<String>("", column)?);
            }
            explained.push(lines);
        }
        let count = explained.pop().unwrap_or_default();
        let page = explained.pop().unwrap_or_default();
        Ok(Some(SearchPlans { page, count }))
    }

    /// SQLite: sets how many name matches a Search may look up through the
    /// FTS index before it walks an ordered index instead (0: always walk).
    /// Both plans find the same tokens; tests use this to exercise both.
    pub fn set_fts_drive_max(&self, matches: u64) {
        self.fts_drive_max
            .store(matches, std::sync::atomic::Ordering::Relaxed);
    }

    /// Picks the plan; `None` when nothing can match (a name cannot contain
    /// a control character).
    async fn plan(&self, q: &SearchQuery, counting: bool) -> Result<Option<Plan>> {
        let name = q.name_contains.as_deref().filter(|n| !n.is_empty());
        if name.is_some_and(|n| n.contains(char::is_control)) {
            return Ok(None);
        }
        let ordered = if q.module.is_some() && q.id.is_none() {
            Driver::Modules
        } else {
            Driver::Tokens
        };
        if self.backend() == DbBackend::Postgres {
            return Ok(Some(Plan {
                driver: ordered,
                name: name.map(|_| NameForm::PgLike),
            }));
        }
        let Some(name) = name else {
            return Ok(Some(Plan {
                driver: ordered,
                name: None,
            }));
        };
        let trigrams = name.chars().count() >= 3;
        let fts_max = self
            .fts_drive_max
            .load(std::sync::atomic::Ordering::Relaxed);
        if trigrams && q.id.is_none() && self.fts_matches_at_most(name, fts_max).await? {
            return Ok(Some(Plan {
                driver: Driver::Fts,
                name: Some(NameForm::FtsJoin),
            }));
        }
        Ok(Some(Plan {
            driver: ordered,
            name: Some(if trigrams && counting {
                NameForm::FtsSet
            } else {
                NameForm::Glob
            }),
        }))
    }

    /// Whether the FTS index has at most `limit` matches of `name` (reads at
    /// most `limit + 1` of them).
    async fn fts_matches_at_most(&self, name: &str, limit: u64) -> Result<bool> {
        let statement = sea_orm::Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "SELECT count(*) FROM (SELECT rowid FROM tokens_name_fts WHERE tokens_name_fts MATCH ? LIMIT ?)",
            [
                fts_phrase(name).into(),
                i64::try_from(limit.saturating_add(1))
                    .unwrap_or(i64::MAX)
                    .into(),
            ],
        );
        let matches: i64 = match self.db.query_one_raw(statement).await? {
            Some(row) => row.try_get_by_index(0)?,
            None => 0,
        };
        Ok(u64::try_from(matches).unwrap_or(u64::MAX) <= limit)
    }
}

#[cfg(test)]
mod tests;
