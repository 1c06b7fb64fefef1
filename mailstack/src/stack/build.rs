//! From [`StackConfig`] to the running filter chain.

use std::sync::Arc;

use super::{Pipeline, StackConfig};
use crate::av::AvFilter;
use crate::dkim::{DkimError, DkimFilter};
use crate::dmarc::DmarcFilter;
use crate::dns::Resolver;
use crate::filter::Chain;
use crate::notify::Notifier;
use crate::spf::filter::SpfFilter;
use crate::spf::policyd::SpfPolicy;
use crate::store::{BufferedWriter, HistoryTee, StoreError};

/// SPF → DKIM → DMARC → AV, each switched off when `None`.
pub type Filters = Chain<
    Option<SpfFilter>,
    Chain<Option<DkimFilter>, Chain<Option<DmarcFilter>, Option<AvFilter>>>,
>;

/// The whole of `mailstackd`: [`Filters`] behind one authserv-id.
pub type Mailstack = Pipeline<Filters>;

/// Why the filters could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The DKIM keys did not load.
    #[error("dkim: {0}")]
    Dkim(#[from] DkimError),
    /// The configured store could not be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// DMARC failure reports are on but cannot be sent.
    #[error("dmarc: {0}")]
    Failure(#[from] crate::dmarc::failure::FailureSetupError),
}

impl StackConfig {
    /// Builds the filters (loading DKIM keys) with DNS through `resolver`. `notify` is the
    /// infected-mail notifier and its recipient, if any. `hostname` is the authserv-id when
    /// neither `authserv_id` nor the MTA's name is known.
    pub fn build(
        &self,
        resolver: Arc<dyn Resolver>,
        notify: Option<(Notifier, String)>,
        hostname: &str,
    ) -> Result<Mailstack, BuildError> {
        self.build_with_store(resolver, notify, hostname)
            .map(|(stack, _)| stack)
    }

    /// [`Self::build`], also returning the [`BufferedWriter`] DMARC records go through when a
    /// store is configured (`[store]`, else DMARC's `MailstackStore`), for its counters. With a
    /// store the writer's task is started: call it inside a tokio runtime.
    pub fn build_with_store(
        &self,
        resolver: Arc<dyn Resolver>,
        notify: Option<(Notifier, String)>,
        hostname: &str,
    ) -> Result<(Mailstack, Option<BufferedWriter>), BuildError> {
        self.build_sharing(resolver, notify, hostname, None)
    }

    /// [`Self::build_with_store`] with the writer of a previous build, when there is one: what
    /// a reload does, so that the store stays open once (an embedded database admits one
    /// opener) and its counters carry on. A store configuration changed since takes effect at
    /// a restart.
    pub fn build_sharing(
        &self,
        resolver: Arc<dyn Resolver>,
        notify: Option<(Notifier, String)>,
        hostname: &str,
        writer: Option<&BufferedWriter>,
    ) -> Result<(Mailstack, Option<BufferedWriter>), BuildError> {
        let spf = self
            .spf
            .clone()
            .map(|c| SpfFilter::new(Arc::new(SpfPolicy::new(c, resolver.clone()))));
        let dkim = match self.dkim.clone() {
            Some(mut c) => {
                // The pipeline removes every field claiming its authserv-id, for all filters:
                // DKIM need not track them a second time under its own id.
                c.keep_auth_results = true;
                Some(DkimFilter::new(c, resolver.clone())?)
            }
            None => None,
        };
        let dkim_verifies = self.dkim.as_ref().is_some_and(|c| c.verify);
        let dmarc = match self.dmarc.clone() {
            Some(mut c) => {
                // One authority per result: with the DKIM filter verifying, DMARC's own
                // verifier (DKIMSelfValidate) would hash every body a second time; with the
                // SPF filter on, SPFSelfValidate would re-check SPF, also for clients the SPF
                // filter's skip lists exempt on purpose.
                c.dkim_self_validate &= !dkim_verifies;
                c.spf_self_validate &= self.spf.is_none();
                let failure = crate::dmarc::failure::from_config(
                    &c,
                    resolver.clone(),
                    &c.authserv_id(Some(hostname)),
                )?;
                let f = DmarcFilter::new(c, resolver.clone());
                Some(match failure {
                    Some(r) => f.with_failure_reports(Arc::new(r)),
                    None => f,
                })
            }
            None => None,
        };
        let store = self
            .store
            .as_ref()
            .or_else(|| self.dmarc.as_ref().and_then(|d| d.store.as_ref()));
        let (dmarc, writer) = match (dmarc, store) {
            (Some(f), Some(store)) => {
                let writer = match writer {
                    Some(w) => w.clone(),
                    None => store.spawn_writer()?,
                };
                let tee = HistoryTee::for_config(f.config(), writer.clone());
                (Some(f.with_history(Arc::new(tee))), Some(writer))
            }
            (dmarc, _) => (dmarc, None),
        };
        let av = self.av.clone().map(|c| AvFilter::new(c, notify));
        // `ARCSeal` in the DMARC options: the DMARC filter validates the chain (it does
        // whenever sealing is configured), the pipeline seals on it.
        let sealer = self
            .dmarc
            .as_ref()
            .and_then(|c| c.arc_seal.as_ref())
            .map(|s| s.sealer.clone());
        let chain = Chain::new(spf, Chain::new(dkim, Chain::new(dmarc, av)));
        Ok((
            Pipeline::new(chain, self.daemon.authserv_id.clone(), hostname)
                .received_spf(self.daemon.received_spf)
                .arc_sealer(sealer),
            writer,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::MemoryResolver;
    use crate::filter::Filter;
    use milter_proto::Actions;
    use std::path::Path;

    #[test]
    fn one_authority_per_result_and_header_actions_required() {
        let text = "[dmarc]\noptions = { DKIMSelfValidate = true, SPFSelfValidate = true }\n";
        let cfg = StackConfig::parse(Path::new("m.toml"), text).unwrap();
        let stack = cfg
            .build(Arc::new(MemoryResolver::new()), None, "mx")
            .unwrap();
        let dmarc = stack.inner().second.second.first.as_ref().unwrap();
        assert!(!dmarc.config().dkim_self_validate && !dmarc.config().spf_self_validate);
        assert!(
            !dmarc.wants_message(),
            "DMARC must not hash bodies DKIM hashes already"
        );
        let needs = stack.needs();
        assert!(
            needs
                .required_actions
                .contains(Actions::ADDHDRS | Actions::CHGHDRS)
        );

        // Without DKIM and SPF filters, DMARC keeps its own checks.
        let text = format!("[dkim]\nenabled = false\n[spf]\nenabled = false\n{text}");
        let cfg = StackConfig::parse(Path::new("m.toml"), &text).unwrap();
        let stack = cfg
            .build(Arc::new(MemoryResolver::new()), None, "mx")
            .unwrap();
        let dmarc = stack.inner().second.second.first.as_ref().unwrap();
        assert!(dmarc.config().dkim_self_validate && dmarc.config().spf_self_validate);
    }
}
