//! Negotiation bit masks: actions (`SMFIF_*`) and protocol options (`SMFIP_*`).

bitflags::bitflags! {
    /// Modifications a filter may make (`SMFIF_*`), negotiated in OPTNEG.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Actions: u32 {
        /// `SMFIF_ADDHDRS`: add headers.
        const ADDHDRS = 0x1;
        /// `SMFIF_CHGBODY`: replace the body.
        const CHGBODY = 0x2;
        /// `SMFIF_ADDRCPT`: add recipients.
        const ADDRCPT = 0x4;
        /// `SMFIF_DELRCPT`: delete recipients.
        const DELRCPT = 0x8;
        /// `SMFIF_CHGHDRS`: change or delete headers (and insert them).
        const CHGHDRS = 0x10;
        /// `SMFIF_QUARANTINE`: quarantine the message (Postfix: hold queue).
        const QUARANTINE = 0x20;
        /// `SMFIF_CHGFROM`: change the envelope sender (v6).
        const CHGFROM = 0x40;
        /// `SMFIF_ADDRCPT_PAR`: add recipients with ESMTP args (v6).
        const ADDRCPT_PAR = 0x80;
        /// `SMFIF_SETSYMLIST`: request macro lists per stage (v6).
        const SETSYMLIST = 0x100;
    }
}

bitflags::bitflags! {
    /// Protocol options (`SMFIP_*`): events the filter does not want (`NO*`), events it will not
    /// answer (`NR_*`), and format options.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Protocol: u32 {
        /// `SMFIP_NOCONNECT`: no CONNECT.
        const NOCONNECT = 0x1;
        /// `SMFIP_NOHELO`: no HELO.
        const NOHELO = 0x2;
        /// `SMFIP_NOMAIL`: no MAIL.
        const NOMAIL = 0x4;
        /// `SMFIP_NORCPT`: no RCPT.
        const NORCPT = 0x8;
        /// `SMFIP_NOBODY`: no BODY chunks.
        const NOBODY = 0x10;
        /// `SMFIP_NOHDRS`: no HEADER.
        const NOHDRS = 0x20;
        /// `SMFIP_NOEOH`: no EOH.
        const NOEOH = 0x40;
        /// `SMFIP_NR_HDR`: no reply to HEADER.
        const NR_HDR = 0x80;
        /// `SMFIP_NOUNKNOWN`: no UNKNOWN.
        const NOUNKNOWN = 0x100;
        /// `SMFIP_NODATA`: no DATA.
        const NODATA = 0x200;
        /// `SMFIP_SKIP`: the MTA understands SKIP.
        const SKIP = 0x400;
        /// `SMFIP_RCPT_REJ`: also send rejected recipients.
        const RCPT_REJ = 0x800;
        /// `SMFIP_NR_CONN`: no reply to CONNECT.
        const NR_CONN = 0x1000;
        /// `SMFIP_NR_HELO`: no reply to HELO.
        const NR_HELO = 0x2000;
        /// `SMFIP_NR_MAIL`: no reply to MAIL.
        const NR_MAIL = 0x4000;
        /// `SMFIP_NR_RCPT`: no reply to RCPT.
        const NR_RCPT = 0x8000;
        /// `SMFIP_NR_DATA`: no reply to DATA.
        const NR_DATA = 0x10000;
        /// `SMFIP_NR_UNKN`: no reply to UNKNOWN.
        const NR_UNKN = 0x20000;
        /// `SMFIP_NR_EOH`: no reply to EOH.
        const NR_EOH = 0x40000;
        /// `SMFIP_NR_BODY`: no reply to BODY chunks.
        const NR_BODY = 0x80000;
        /// `SMFIP_HDR_LEADSPC`: header values keep their leading space.
        const HDR_LEADSPC = 0x100000;
        /// `SMFIP_MDS_256K`: packets up to 256 KiB.
        const MDS_256K = 0x1000_0000;
        /// `SMFIP_MDS_1M`: packets up to 1 MiB.
        const MDS_1M = 0x2000_0000;
    }
}

impl Protocol {
    /// Every `NR_*` ("no reply") option: only end of message is answered. What a filter that
    /// never decides before end of message asks for (libmilter's null filters do).
    pub const ALL_NR: Self = Self::NR_CONN
        .union(Self::NR_HELO)
        .union(Self::NR_MAIL)
        .union(Self::NR_RCPT)
        .union(Self::NR_DATA)
        .union(Self::NR_UNKN)
        .union(Self::NR_HDR)
        .union(Self::NR_EOH)
        .union(Self::NR_BODY);
}
