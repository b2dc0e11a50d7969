//! Packed weights shared between plans.
//!
//! Packing a weight for its kernel (the GEMM's panels, a convolution's
//! Winograd transform, an int8 layer's packed columns and sums) depends only
//! on the op, the shapes and the constant inputs. Plans of graphs that share
//! most weights — the candidates `mlc compress` measures differ in a layer
//! or two — take each packed weight from one [`PackCache`] instead of
//! packing it again. An entry is found by a fingerprint of the op, the
//! shapes and the constants' contents, and taken only when the constants
//! compare equal, so a fingerprint collision can never hand a plan another
//! weight's packing.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use crate::ir::{Op, Tensor, TensorData};
use crate::kernels::cpu::choice::Choice;

/// What identifies a packing: the op (with its attributes), the shapes the
/// step runs at, and the constant inputs.
pub(crate) struct PackKey {
    fingerprint: u64,
    consts: Vec<Option<Arc<Tensor>>>,
}

impl PackKey {
    pub(crate) fn new(op: &Op, shapes: &[&[usize]], consts: Vec<Option<Arc<Tensor>>>) -> PackKey {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{op:?}").hash(&mut h);
        shapes.hash(&mut h);
        for c in &consts {
            match c {
                Some(t) => {
                    t.shape().hash(&mut h);
                    t.dtype().to_string().hash(&mut h);
                    content_hash(t).hash(&mut h);
                }
                None => 0u8.hash(&mut h),
            }
        }
        PackKey {
            fingerprint: h.finish(),
            consts,
        }
    }

    /// The key of the same operands packed for kernel choice `choice`.
    pub(crate) fn for_choice(mut self, choice: Choice) -> PackKey {
        let choice = choice.packing();
        if !choice.is_default() {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (self.fingerprint, choice).hash(&mut h);
            self.fingerprint = h.finish();
        }
        self
    }

    fn same_consts(&self, other: &[Option<Arc<Tensor>>]) -> bool {
        self.consts.len() == other.len()
            && self.consts.iter().zip(other).all(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                (None, None) => true,
                _ => false,
            })
    }
}

/// A fast hash of a tensor's values (FNV-style): the fingerprint only
/// narrows the search, equality decides. Weights are f32 or int8; other
/// types hash through f64.
fn content_hash(t: &Tensor) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut add = |x: u64| h = (h ^ x).wrapping_mul(PRIME);
    match t.data() {
        TensorData::F32(v) => v.iter().for_each(|x| add(x.to_bits() as u64)),
        TensorData::I8(v) => v.iter().for_each(|&x| add(x as u8 as u64)),
        _ => t.to_f64_vec().iter().for_each(|x| add(x.to_bits())),
    }
    h
}

/// A packing of any type (the runtime keeps f32 and int8 packings).
type Packed = Arc<dyn std::any::Any + Send + Sync>;
/// Entries by fingerprint; a fingerprint may hold several keys.
type Entries = HashMap<u64, Vec<(PackKey, Packed)>>;

/// Packed weights by `PackKey`, shared by the plans built with it (see
/// the module docs). Cheap to clone: clones share the entries.
#[derive(Clone, Default)]
pub struct PackCache {
    entries: Arc<Mutex<Entries>>,
}

impl PackCache {
    /// The packing stored under `key`, else `make()`'s (stored when Some).
    /// Returns it and whether it was packed now.
    pub(crate) fn get_or_pack<T: Send + Sync + 'static>(
        &self,
        key: PackKey,
        make: impl FnOnce() -> Option<T>,
    ) -> (Option<Arc<T>>, bool) {
        let found = self.lock().get(&key.fingerprint).and_then(|list| {
            list.iter()
                .find(|(k, _)| k.same_consts(&key.consts))
                .and_then(|(_, v)| v.clone().downcast::<T>().ok())
        });
        if let Some(v) = found {
            return (Some(v), false);
        }
        let Some(v) = make().map(Arc::new) else {
            return (None, false);
        };
        let any: Packed = v.clone();
        self.lock()
            .entry(key.fingerprint)
            .or_default()
            .push((key, any));
        (Some(v), true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock leaves the map consistent (entries
        // are pushed whole), so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}
