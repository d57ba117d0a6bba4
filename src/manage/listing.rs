//! Listing use-cases: Search and ListEvents, both keyset-paged with page
//! tokens bound to a fingerprint of their filters (`domain::page`).

use super::{EventsInput, SearchInput, SearchPage, TextQuery, TokenManager};
use crate::{
    domain::{
        AccountId, Caller, OwnerId, TokenState,
        page::{EventCursor, Filters, TokenCursor},
        token::Event,
    },
    error::{Error, Result},
    store::{EventQuery, SearchQuery},
};

/// The states a Search covers: those asked for, else all but revoked
/// (unless revoked tokens are included).
fn effective_states(states: &[TokenState], include_revoked: bool) -> Vec<TokenState> {
    if !states.is_empty() {
        states.to_vec()
    } else if include_revoked {
        vec![]
    } else {
        vec![TokenState::Active, TokenState::Disabled]
    }
}

impl TokenManager {
    pub async fn search(&self, caller: &Caller, input: SearchInput) -> Result<SearchPage> {
        let scope = caller.listing_scope().map_err(|d| Error::denied(d, ""))?;
        if let (Some(a), Some(b)) = (input.created_after, input.created_before)
            && a >= b
        {
            return Err(Error::invalid(
                "created_after",
                "must be before created_before",
            ));
        }
        let breaks = match input.breaks_policy {
            true => Some(
                self.policies
                    .breach_filter(caller, input.account_id.as_ref().map(|a| a.as_str()))
                    .await?,
            ),
            false => None,
        };
        let mut query = SearchQuery {
            scope: Some(scope.clone()),
            account_id: input.account_id.map(AccountId::into_inner),
            owner_id: input.owner_id.map(OwnerId::into_inner),
            created_by: input.created_by.map(OwnerId::into_inner),
            module: input.module.clone(),
            created_after: input.created_after,
            created_before: input.created_before,
            last_used_before: input.last_used_before,
            last_used_after: input.last_used_after,
            expires_before: input.expires_before,
            expires_after: input.expires_after,
            breaks,
            bound: input.bound,
            limit: input.page_size + 1,
            ..SearchQuery::default()
        };
        query.states = effective_states(&input.states, input.include_revoked);
        let mut query_key = String::new();
        match &input.query {
            None => {}
            Some(TextQuery::Name(text)) => {
                query.name_contains = Some(text.clone());
                query_key = format!("name:{text}");
            }
            Some(TextQuery::Value(value)) => {
                // A token value matches exactly its token, and only if its secret verifies.
                if self.validator.possessed(value).await?.is_none() {
                    return Ok(SearchPage {
                        tokens: Vec::new(),
                        next_page_token: None,
                        total: input.include_total.then_some(0),
                    });
                }
                query.id = Some(value.id());
                query_key = format!("id:{}", value.id());
            }
        }
        // The page size may change between pages; the filters may not.
        let mut filters = Filters::default()
            .scope(&scope)
            .text(query.account_id.as_deref())
            .raw(&query_key)
            .states(&query.states)
            .text(query.owner_id.as_deref())
            .text(query.created_by.as_deref())
            .text(query.module.as_deref())
            .time(query.created_after)
            .time(query.created_before)
            .time(query.last_used_before)
            .time(query.last_used_after)
            .time(query.expires_before)
            .time(query.expires_after)
            .raw(if input.breaks_policy { "breaks" } else { "" });
        // Only when set: page tokens made without it (and before it
        // existed) keep their fingerprint.
        if let Some(bound) = input.bound {
            filters = filters.raw(if bound { "bound" } else { "unbound" });
        }
        let filters = filters.fingerprint();
        if let Some(t) = &input.page_token {
            query.after = Some(TokenCursor::decode("page_token", t, filters)?);
        }
        let mut tokens = self.store.search_tokens(&query).await?;
        let next = if tokens.len() as u64 > input.page_size {
            tokens.truncate(input.page_size as usize);
            tokens.last().map(|t| {
                TokenCursor {
                    created_at: t.created_at,
                    id: t.id,
                }
                .encode(filters)
            })
        } else {
            None
        };
        let total = if input.include_total {
            Some(self.store.count_tokens(&query).await?)
        } else {
            None
        };
        Ok(SearchPage {
            tokens,
            next_page_token: next,
            total,
        })
    }

    pub async fn list_events(
        &self,
        caller: &Caller,
        input: EventsInput,
    ) -> Result<(Vec<Event>, Option<String>)> {
        let scope = caller.listing_scope().map_err(|d| Error::denied(d, ""))?;
        let filters = Filters::default()
            .scope(&scope)
            .token_id(input.token_id)
            .text(input.account_id.as_ref().map(AccountId::as_str))
            .fingerprint();
        let after = match &input.page_token {
            Some(t) => Some(EventCursor::decode("page_token", t, filters)?),
            None => None,
        };
        let query = EventQuery {
            scope,
            token_id: input.token_id.map(|t| t.to_string()),
            account_id: input.account_id.map(AccountId::into_inner),
            after,
            limit: input.page_size + 1,
        };
        let mut events = self.store.list_events(&query).await?;
        let next = if events.len() as u64 > input.page_size {
            events.truncate(input.page_size as usize);
            events
                .last()
                .map(|e| EventCursor { id: e.id }.encode(filters))
        } else {
            None
        };
        Ok((events, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_hides_revoked_tokens_unless_asked() {
        use TokenState::*;
        assert_eq!(effective_states(&[], false), vec![Active, Disabled]);
        assert_eq!(effective_states(&[], true), vec![]);
        assert_eq!(effective_states(&[Revoked], false), vec![Revoked]);
    }
}
