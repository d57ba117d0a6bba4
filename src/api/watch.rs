//! WatchEvents on the wire: the request parsed (each bad kind named), the
//! domain stream mapped to responses, and its end to a status carrying the
//! id to resume after (in the message and the `tokend-resume-after-id`
//! trailer).

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};

use super::{
    TokenApi,
    convert::{event_kind_from_pb, event_to_pb, opt_account},
};
use crate::{
    error::{Error, Result},
    manage::watch::{WatchEnd, WatchInput, WatchItem},
    pb,
};

/// The response stream of WatchEvents.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>>;

/// The trailer naming the event id to resume after.
pub const RESUME_TRAILER: &str = "tokend-resume-after-id";

fn resume_status(status: Status, resume_after: i64) -> Status {
    let mut status = Status::new(
        status.code(),
        format!("{}; resume with after_id={resume_after}", status.message()),
    );
    if let Ok(v) = resume_after.to_string().parse() {
        status.metadata_mut().insert(RESUME_TRAILER, v);
    }
    status
}

fn item(i: WatchItem) -> Result<pb::WatchEventsResponse, Status> {
    match i {
        Ok(event) => Ok(pb::WatchEventsResponse {
            event: Some(event_to_pb(&event)),
        }),
        Err(WatchEnd::Lagged { resume_after }) => Err(resume_status(
            Status::resource_exhausted("the watcher fell behind the events"),
            resume_after,
        )),
        Err(WatchEnd::Failed {
            error,
            resume_after,
        }) => Err(resume_status(Status::from(error), resume_after)),
        Err(WatchEnd::Stopped { resume_after }) => Err(resume_status(
            Status::unavailable("the server is shutting down"),
            resume_after,
        )),
    }
}

impl TokenApi {
    pub(super) async fn inner_watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<WatchStream> {
        let caller = self.caller(&req).await?;
        let r = req.into_inner();
        let mut kinds = Vec::with_capacity(r.kinds.len());
        for (i, k) in r.kinds.iter().enumerate() {
            let kind = event_kind_from_pb(&format!("kinds[{i}]"), *k)?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        if let Some(id) = r.after_id
            && id < 0
        {
            return Err(Error::invalid("after_id", "must not be negative"));
        }
        let input = WatchInput {
            account_id: opt_account("account_id", &r.account_id)?
                .map(crate::domain::AccountId::into_inner),
            kinds,
            after_id: r.after_id,
        };
        let rx = self.manager.watch_events(&caller, input).await?;
        Ok(Box::pin(ReceiverStream::new(rx).map(item)))
    }
}
