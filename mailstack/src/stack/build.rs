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
        let spf = self
            .spf
            .clone()
            .map(|c| SpfFilter::new(Arc::new(SpfPolicy::new(c, resolver.clone()))));
        let dkim = match self.dkim.clone() {
            Some(c) => Some(DkimFilter::new(c, resolver.clone())?),
            None => None,
        };
        let dmarc = self
            .dmarc
            .clone()
            .map(|c| DmarcFilter::new(c, resolver.clone()));
        let av = self.av.clone().map(|c| AvFilter::new(c, notify));
        let chain = Chain::new(spf, Chain::new(dkim, Chain::new(dmarc, av)));
        Ok(
            Pipeline::new(chain, self.daemon.authserv_id.clone(), hostname)
                .received_spf(self.daemon.received_spf),
        )
    }
}
