pub mod codec;
pub mod keyframe_cache;
pub mod packet_cache;
pub mod rewrite;
pub mod rtp;
pub mod vp8;
