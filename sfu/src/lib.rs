pub mod rtp;
pub mod vp8;
