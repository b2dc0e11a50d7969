//! Static memory planning: every f32 intermediate of a plan gets an offset in
//! one arena, and buffers whose lifetimes do not overlap share memory.
//!
//! The planner sees each buffer as a size and a closed interval of schedule
//! steps (`first..=last`: defined at `first`, last read at `last`). Two
//! buffers may overlap in memory only when their intervals are disjoint. It
//! places buffers greedily by decreasing size (TFLite's "greedy by size"
//! strategy): each buffer goes into the smallest gap, among the buffers
//! already placed that are live at the same time, that holds it, or after
//! all of them. Large buffers placed first fix the layout's skeleton and the
//! many small ones fill the gaps, which gets close to the lower bound (the
//! largest total live at any one step) on real networks. Sizes are in f32
//! elements and every size and offset is a multiple of [`ALIGN`] floats
//! (64 bytes), so every buffer starts on a cache line.

/// Alignment of every buffer, in f32 elements (16 floats = 64 bytes).
pub const ALIGN: usize = 16;

/// `n` rounded up to a multiple of [`ALIGN`] (`None` on overflow).
pub fn round_up(n: usize) -> Option<usize> {
    n.checked_add(ALIGN - 1).map(|m| m / ALIGN * ALIGN)
}

/// One buffer to place: `size` elements live from step `first` to step
/// `last` inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub size: usize,
    pub first: usize,
    pub last: usize,
}

impl Interval {
    fn overlaps_in_time(&self, o: &Interval) -> bool {
        self.first <= o.last && o.first <= self.last
    }
}

/// The result of planning: an offset per buffer (in the order given) and the
/// arena size they need, both in f32 elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub offsets: Vec<usize>,
    pub total: usize,
}

/// Places `buffers` (sizes must already be multiples of [`ALIGN`]; see
/// [`round_up`]). Deterministic: ties are broken by first use, then index.
pub fn plan(buffers: &[Interval]) -> Layout {
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&buffers[a], &buffers[b]);
        y.size
            .cmp(&x.size)
            .then(x.first.cmp(&y.first))
            .then(a.cmp(&b))
    });
    let mut offsets = vec![0usize; buffers.len()];
    // Placed buffers as (offset, end, index), kept sorted by offset.
    let mut placed: Vec<(usize, usize, usize)> = Vec::with_capacity(buffers.len());
    let mut total = 0usize;
    for &i in &order {
        let b = &buffers[i];
        if b.size == 0 {
            // Empty buffers occupy nothing; offset 0 is as good as any.
            continue;
        }
        let mut best: Option<(usize, usize)> = None; // (gap size, offset)
        let mut prev_end = 0usize;
        for &(off, end, j) in &placed {
            if !b.overlaps_in_time(&buffers[j]) {
                continue;
            }
            if off >= prev_end {
                let gap = off - prev_end;
                if gap >= b.size && best.is_none_or(|(g, _)| gap < g) {
                    best = Some((gap, prev_end));
                }
            }
            prev_end = prev_end.max(end);
        }
        let off = best.map_or(prev_end, |(_, o)| o);
        let end = off + b.size;
        offsets[i] = off;
        total = total.max(end);
        let pos = placed.partition_point(|&(o, _, _)| o <= off);
        placed.insert(pos, (off, end, i));
    }
    Layout { offsets, total }
}

/// The largest total size live at any one step: no layout can be smaller.
pub fn lower_bound(buffers: &[Interval]) -> usize {
    let steps = buffers.iter().map(|b| b.last + 1).max().unwrap_or(0);
    (0..steps)
        .map(|t| {
            buffers
                .iter()
                .filter(|b| b.first <= t && t <= b.last)
                .map(|b| b.size)
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0)
}

/// Checks a layout: buffers live at the same time never share memory and
/// every buffer fits in the arena. Returns the first offending pair.
pub fn check(buffers: &[Interval], layout: &Layout) -> Result<(), String> {
    for (i, a) in buffers.iter().enumerate() {
        let ao = layout.offsets[i];
        if ao + a.size > layout.total {
            return Err(format!("buffer {i} ends past the arena"));
        }
        for (j, b) in buffers.iter().enumerate().skip(i + 1) {
            let bo = layout.offsets[j];
            let mem = ao < bo + b.size && bo < ao + a.size;
            if mem && a.overlaps_in_time(b) {
                return Err(format!(
                    "buffers {i} and {j} are live together and overlap in memory"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::SplitMix64;

    fn iv(size: usize, first: usize, last: usize) -> Interval {
        Interval { size, first, last }
    }

    #[test]
    fn round_up_to_cache_lines() {
        assert_eq!(round_up(0), Some(0));
        assert_eq!(round_up(1), Some(16));
        assert_eq!(round_up(16), Some(16));
        assert_eq!(round_up(17), Some(32));
        assert_eq!(round_up(usize::MAX), None);
    }

    #[test]
    fn a_chain_needs_two_buffers() {
        // a -> b -> c -> d: each buffer dies when the next is made.
        let bufs = [iv(32, 0, 1), iv(32, 1, 2), iv(32, 2, 3), iv(32, 3, 4)];
        let l = plan(&bufs);
        check(&bufs, &l).unwrap();
        assert_eq!(l.total, 64);
        assert_eq!(l.offsets[0], l.offsets[2]);
        assert_eq!(l.offsets[1], l.offsets[3]);
        assert_ne!(l.offsets[0], l.offsets[1]);
    }

    #[test]
    fn live_together_never_share() {
        let bufs = [iv(16, 0, 5), iv(16, 0, 5), iv(16, 0, 5)];
        let l = plan(&bufs);
        check(&bufs, &l).unwrap();
        assert_eq!(l.total, 48);
    }

    #[test]
    fn small_buffers_fill_gaps_of_big_ones() {
        // The big buffers live at different times and share offset 0; each
        // small one is live with one big one and goes after it, both at the
        // same offset since they are never live together.
        let bufs = [iv(64, 0, 1), iv(64, 2, 3), iv(16, 0, 0), iv(16, 3, 3)];
        let l = plan(&bufs);
        check(&bufs, &l).unwrap();
        assert_eq!(l.total, 80);
        assert_eq!(l.total, lower_bound(&bufs));
    }

    #[test]
    fn empty_and_no_buffers() {
        assert_eq!(plan(&[]).total, 0);
        let bufs = [iv(0, 0, 3), iv(16, 1, 2)];
        let l = plan(&bufs);
        check(&bufs, &l).unwrap();
        assert_eq!(l.total, 16);
    }

    #[test]
    fn random_lifetimes_are_valid_and_reuse_memory() {
        let mut rng = SplitMix64::new(7);
        for _ in 0..50 {
            let n = 1 + rng.below(40) as usize;
            let bufs: Vec<Interval> = (0..n)
                .map(|_| {
                    let first = rng.below(30) as usize;
                    let len = rng.below(6) as usize;
                    iv(ALIGN * (1 + rng.below(20) as usize), first, first + len)
                })
                .collect();
            let l = plan(&bufs);
            check(&bufs, &l).unwrap();
            let sum: usize = bufs.iter().map(|b| b.size).sum();
            assert!(l.total <= sum);
            assert!(l.total >= lower_bound(&bufs));
            assert!(l.offsets.iter().all(|o| o % ALIGN == 0));
        }
    }

    #[test]
    fn check_catches_overlap() {
        let bufs = [iv(16, 0, 1), iv(16, 1, 2)];
        let bad = Layout {
            offsets: vec![0, 0],
            total: 16,
        };
        assert!(check(&bufs, &bad).is_err());
    }
}
