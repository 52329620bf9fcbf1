//! Calls of a 2026-07-28 client that span several requests. That revision
//! has no server-to-client requests and no long-lived session: a server
//! that needs something answers `input_required` with a `requestState`,
//! and the client repeats the identical request with it (and with its
//! `inputResponses`). gavel does this in two cases:
//!
//! - the call waits for a human: the held call answers `input_required`
//!   instead of a refusal, and the repeated call is judged again (it
//!   finds its pending request, or spends the grant once);
//! - the upstream (speaking 2026-07-28 too) asked the client for input
//!   during an admitted call: the admission stays open here, and the
//!   client's next round is forwarded under it, never admitted anew (an
//!   approved call would otherwise need a second approval to hear the
//!   client's answer).
//!
//! The `requestState` gavel hands out is an unguessable handle, never the
//! state itself: what it stands for stays in this process, bound to the
//! principal, the upstream, the tool and the exact admitted arguments, and
//! is spent by its first use. The upstream's own `requestState` never
//! reaches the client, so the client cannot swap it for another one.

use gavel_core::{Outcome, Permitted, RequestId};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a client has to come back with its next round.
pub(crate) const ROUND_LIFETIME: Duration = Duration::from_secs(600);

/// Open rounds one principal may hold; the oldest ends first.
const PER_PRINCIPAL: usize = 64;

/// The prefix of every handle gavel hands out, so a `requestState` that is
/// not one of gavel's is told apart from one that expired.
const HANDLE_PREFIX: &str = "gavel-round-";

/// What a call is waiting for between two of the client's requests.
pub(crate) enum Next {
    /// A human's decision on `request`; the next round is judged again.
    Approval { request: RequestId },
    /// The client's answers to the upstream's questions; the next round is
    /// forwarded under `permitted`, with the upstream's own state.
    Input {
        permitted: Box<Permitted>,
        upstream_state: Option<String>,
    },
}

/// One open round: who may continue it, and with what call.
pub(crate) struct Round {
    pub principal: String,
    pub upstream: String,
    pub tool: String,
    /// The arguments as admitted (after normalization): the next round
    /// must carry the same.
    pub args: serde_json::Value,
    pub next: Next,
    expires: Instant,
}

impl Round {
    pub(crate) fn new(
        principal: String,
        upstream: String,
        tool: String,
        args: serde_json::Value,
        next: Next,
    ) -> Round {
        Round {
            principal,
            upstream,
            tool,
            args,
            next,
            expires: Instant::now() + ROUND_LIFETIME,
        }
    }

    /// Ends a round nobody continued: an admitted call that was forwarded
    /// and then abandoned is recorded as such.
    fn abandon(self, why: &str) {
        if let Next::Input { permitted, .. } = self.next {
            (*permitted).finish(Outcome::Failed {
                detail: format!(
                    "forwarded; the upstream asked the client for input and {why}, so the call never completed"
                ),
            });
        }
    }
}

/// Why a `requestState` does not continue a call.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not one of gavel's handles.
    Foreign,
    /// Already used, expired, or never handed out here.
    Unknown,
    /// Handed out for another principal, tool or arguments (and now spent).
    Mismatch,
}

impl Refused {
    pub(crate) fn message(&self) -> &'static str {
        match self {
            Refused::Foreign => {
                "requestState was not issued by this gateway; repeat the call without it"
            }
            Refused::Unknown => {
                "requestState is unknown, expired or already used; repeat the call without it"
            }
            Refused::Mismatch => {
                "requestState belongs to another call (principal, tool or arguments differ); nothing was run"
            }
        }
    }
}

/// The open rounds of this gateway.
#[derive(Default)]
pub(crate) struct Rounds {
    open: Mutex<HashMap<String, Round>>,
}

impl Rounds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Round>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `round` until the client continues it; returns the handle the
    /// client echoes as `requestState`.
    pub(crate) fn park(&self, round: Round) -> String {
        let handle = format!(
            "{HANDLE_PREFIX}{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let mut ended = Vec::new();
        {
            let mut open = self.lock();
            let mut mine: Vec<(Instant, String)> = open
                .iter()
                .filter(|(_, r)| r.principal == round.principal)
                .map(|(h, r)| (r.expires, h.clone()))
                .collect();
            if mine.len() >= PER_PRINCIPAL {
                mine.sort();
                for (_, h) in mine.iter().take(mine.len() + 1 - PER_PRINCIPAL) {
                    if let Some(r) = open.remove(h) {
                        ended.push(r);
                    }
                }
            }
            open.insert(handle.clone(), round);
        }
        for r in ended {
            r.abandon("the client opened too many other rounds since");
        }
        handle
    }

    /// Takes the round `handle` stands for, for `principal`, `upstream`,
    /// `tool` and exactly `args`. Spent either way: a handle is good for
    /// one try.
    pub(crate) fn take(
        &self,
        handle: &str,
        principal: &str,
        upstream: &str,
        tool: &str,
        args: &serde_json::Value,
    ) -> Result<Round, Refused> {
        if !handle.starts_with(HANDLE_PREFIX) {
            return Err(Refused::Foreign);
        }
        let round = self.lock().remove(handle).ok_or(Refused::Unknown)?;
        if round.expires <= Instant::now() {
            round.abandon("did not come back in time");
            return Err(Refused::Unknown);
        }
        if round.principal != principal
            || round.upstream != upstream
            || round.tool != tool
            || &round.args != args
        {
            round.abandon("the next round was for another call");
            return Err(Refused::Mismatch);
        }
        Ok(round)
    }

    /// Ends the rounds whose client never came back.
    pub(crate) fn prune(&self) {
        let now = Instant::now();
        let expired: Vec<Round> = {
            let mut open = self.lock();
            let handles: Vec<String> = open
                .iter()
                .filter(|(_, r)| r.expires <= now)
                .map(|(h, _)| h.clone())
                .collect();
            handles.iter().filter_map(|h| open.remove(h)).collect()
        };
        for r in expired {
            r.abandon("did not come back in time");
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(principal: &str, args: serde_json::Value) -> Round {
        Round::new(
            principal.into(),
            "up".into(),
            "tool".into(),
            args,
            Next::Approval {
                request: RequestId("r".into()),
            },
        )
    }

    #[test]
    fn a_handle_continues_its_own_call_once() {
        let rounds = Rounds::default();
        let args = serde_json::json!({"a": 1});
        let h = rounds.park(round("agent:a", args.clone()));
        assert!(rounds.take(&h, "agent:a", "up", "tool", &args).is_ok());
        assert_eq!(
            rounds.take(&h, "agent:a", "up", "tool", &args).err(),
            Some(Refused::Unknown)
        );
    }

    #[test]
    fn another_principal_tool_or_arguments_spend_the_handle_and_get_nothing() {
        let rounds = Rounds::default();
        let args = serde_json::json!({"a": 1});
        for (p, t, a) in [
            ("agent:b", "tool", args.clone()),
            ("agent:a", "other", args.clone()),
            ("agent:a", "tool", serde_json::json!({"a": 2})),
        ] {
            let h = rounds.park(round("agent:a", args.clone()));
            assert_eq!(
                rounds.take(&h, p, "up", t, &a).err(),
                Some(Refused::Mismatch)
            );
            assert_eq!(
                rounds.take(&h, "agent:a", "up", "tool", &args).err(),
                Some(Refused::Unknown)
            );
        }
        assert_eq!(
            rounds.take("made-up", "agent:a", "up", "tool", &args).err(),
            Some(Refused::Foreign)
        );
    }

    #[test]
    fn one_principal_holds_a_bounded_number_of_rounds() {
        let rounds = Rounds::default();
        let first = rounds.park(round("agent:a", serde_json::json!({})));
        for _ in 0..PER_PRINCIPAL {
            rounds.park(round("agent:a", serde_json::json!({})));
        }
        rounds.park(round("agent:b", serde_json::json!({})));
        assert_eq!(rounds.len(), PER_PRINCIPAL + 1);
        assert_eq!(
            rounds
                .take(&first, "agent:a", "up", "tool", &serde_json::json!({}))
                .err(),
            Some(Refused::Unknown)
        );
    }
}
