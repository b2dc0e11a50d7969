//! Post-training quantization: turning an f32 model into one whose weights
//! (and, for static int8, activations) are stored and computed in fewer bits.
//!
//! Static quantization needs to know the range of every activation that
//! feeds a quantized layer before the model is compiled; [`calib`] gathers
//! those ranges from sample inputs with bounded memory and turns them into
//! u8 scales and zero points.

pub mod calib;
