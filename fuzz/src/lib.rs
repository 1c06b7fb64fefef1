//! What the fuzz targets share: their fixtures (zones, configuration, public suffix list),
//! kept out of the `mailstack` library.

pub mod fixtures;
