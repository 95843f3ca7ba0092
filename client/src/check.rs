//! The calls: [`Client::check`] and [`Client::check_all`], with the deny cache in front
//! of the network and the fallback behind it.

use quorate_proto::v1 as pb;

use crate::{Client, Decision, DenyCacheStats, DenyReason, Error, Fallback, Hit, Source};

impl Client {
    /// Checks one hit of `cost` (0 peeks) on `key` under `limit`. A denial is an
    /// `Ok` [`Decision`] with `allowed == false`.
    pub async fn check(&self, limit: &str, key: &str, cost: u64) -> Result<Decision, Error> {
        let mut decisions = self.check_all(&[Hit::new(limit, key, cost)]).await?;
        decisions
            .pop()
            .ok_or_else(|| Error::protocol("the server returned no decision"))
    }

    /// Checks several hits as one all-or-nothing decision; one decision each, in order.
    ///
    /// The hits are granted only if every one passes; a denied call consumes nothing
    /// from any counter, and its hits that would have passed come back allowed with
    /// `remaining` unchanged (a peek), so the denied ones name the culprit. The call is
    /// granted when every decision is allowed. [`Client::check_each`] decides each hit
    /// on its own instead.
    pub async fn check_all(&self, hits: &[Hit]) -> Result<Vec<Decision>, Error> {
        self.check_batch(hits, true).await
    }

    /// Checks several hits in one call, each decided on its own: an allowed hit is
    /// counted even when another hit of the call is denied.
    pub async fn check_each(&self, hits: &[Hit]) -> Result<Vec<Decision>, Error> {
        self.check_batch(hits, false).await
    }

    async fn check_batch(&self, hits: &[Hit], atomic: bool) -> Result<Vec<Decision>, Error> {
        let cache = self.inner.deny_cache.as_ref();
        let mut decided: Vec<Option<Decision>> = hits
            .iter()
            .map(|h| cache.and_then(|c| c.lookup(&h.limit, &h.key, h.cost)))
            .collect();
        let to_send: Vec<usize> = (0..hits.len()).filter(|&i| decided[i].is_none()).collect();
        if to_send.is_empty() {
            return Ok(decided.into_iter().flatten().collect());
        }
        // An all-or-nothing call the deny cache already denies takes nothing: its other
        // hits are only peeked.
        let peek_only = atomic
            && decided
                .iter()
                .any(|d| d.as_ref().is_some_and(|d| !d.allowed));
        let request = pb::CheckRequest {
            hits: to_send
                .iter()
                .map(|&i| pb::Hit {
                    limit: hits[i].limit.clone(),
                    key: hits[i].key.clone(),
                    cost: Some(if peek_only { 0 } else { hits[i].cost }),
                })
                .collect(),
            atomic: Some(atomic),
        };
        let sent = cache.map(|c| c.now());
        let answers = match self.send(request).await {
            Ok(answers) => answers,
            Err(e) => return self.fall_back(e, hits, decided),
        };
        if answers.len() != to_send.len() {
            return Err(Error::protocol(format!(
                "expected {} decisions, got {}",
                to_send.len(),
                answers.len()
            )));
        }
        for (i, answer) in to_send.into_iter().zip(answers) {
            let decision = Decision::from(answer);
            if let (Some(cache), Some(sent)) = (cache, sent) {
                cache.record(&hits[i].key, hits[i].cost, sent, &decision);
            }
            decided[i] = Some(decision);
        }
        Ok(decided.into_iter().flatten().collect())
    }

    /// The answer when the cluster could not decide: the error, or a marked decision for
    /// every hit the deny cache did not already answer.
    fn fall_back(
        &self,
        error: Error,
        hits: &[Hit],
        decided: Vec<Option<Decision>>,
    ) -> Result<Vec<Decision>, Error> {
        let allowed = match self.inner.builder.sdk.fallback {
            Fallback::Allow if error.is_unreachable() => true,
            Fallback::Deny if error.is_unreachable() => false,
            _ => return Err(error),
        };
        tracing::warn!(%error, allowed, "quorate unreachable; answering from the fallback");
        Ok(hits
            .iter()
            .zip(decided)
            .map(|(hit, local)| {
                local.unwrap_or_else(|| Decision {
                    allowed,
                    limit: hit.limit.clone(),
                    limit_value: 0,
                    remaining: 0,
                    reset_after: std::time::Duration::ZERO,
                    retry_after: None,
                    reason: (!allowed).then_some(DenyReason::Unavailable),
                    window: std::time::Duration::ZERO,
                    source: if allowed {
                        Source::FailOpen
                    } else {
                        Source::FailClosed
                    },
                })
            })
            .collect())
    }

    /// The deny cache's counters, or `None` when it is off.
    pub fn deny_cache_stats(&self) -> Option<DenyCacheStats> {
        self.inner.deny_cache.as_ref().map(|c| c.stats())
    }
}
