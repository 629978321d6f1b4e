pub mod codec;
pub mod rewrite;
pub mod rtp;
pub mod vp8;
