//! The python-policyd-spf compatible policy service (work in progress).
