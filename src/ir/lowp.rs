//! Bit formats of the low-precision element types and exact conversions to
//! and from them.
//!
//! The float8 flavours and float4 e2m1 are "minifloats": a sign bit, a few
//! exponent bits with a bias and a few mantissa bits, with subnormals, and
//! differing only in how they spend the special encodings ([`Minifloat`]).
//! Decoding is exact in f32. Encoding rounds to nearest, ties to even, from
//! f64 (exact for every source type) and then handles overflow the way ONNX
//! Cast specifies with `saturate`: clamp to the largest finite value, or,
//! without saturation, infinity (e5m2) or NaN (the finite formats). float8
//! e8m0 is an unsigned power of two and follows the ONNX reference
//! `to_float8e8m0` with its three rounding modes. The 4- and 2-bit integers
//! wrap (two's complement), as the ONNX Cast rules and `ml_dtypes` do.
//!
//! All of this mirrors `ml_dtypes` and `onnx.numpy_helper`, which the ONNX
//! reference implementation (and so the conformance data) is built on.

use super::DType;

/// How a minifloat spends its special encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Specials {
    /// IEEE style: the all-ones exponent holds infinities (zero mantissa) and
    /// NaNs (e5m2).
    Ieee,
    /// Only `S.1111.111` is NaN; no infinities (e4m3fn).
    AllOnesNan,
    /// `0x80`, negative zero's pattern, is the single NaN; no infinities and
    /// no negative zero (the `fnuz` formats).
    Fnuz,
    /// Neither NaN nor infinity (float4 e2m1).
    Finite,
}

/// A small binary float format of at most 8 bits: sign, `exp_bits` exponent
/// bits with `bias`, `man_bits` mantissa bits, subnormals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Minifloat {
    exp_bits: u32,
    man_bits: u32,
    bias: i32,
    specials: Specials,
}

/// float8 e4m3fn: max 448, no infinities.
pub const F8E4M3FN: Minifloat = Minifloat {
    exp_bits: 4,
    man_bits: 3,
    bias: 7,
    specials: Specials::AllOnesNan,
};
/// float8 e4m3fnuz: max 240.
pub const F8E4M3FNUZ: Minifloat = Minifloat {
    exp_bits: 4,
    man_bits: 3,
    bias: 8,
    specials: Specials::Fnuz,
};
/// float8 e5m2: max 57344, IEEE infinities.
pub const F8E5M2: Minifloat = Minifloat {
    exp_bits: 5,
    man_bits: 2,
    bias: 15,
    specials: Specials::Ieee,
};
/// float8 e5m2fnuz: max 57344.
pub const F8E5M2FNUZ: Minifloat = Minifloat {
    exp_bits: 5,
    man_bits: 2,
    bias: 16,
    specials: Specials::Fnuz,
};
/// float4 e2m1: max 6.
pub const F4E2M1: Minifloat = Minifloat {
    exp_bits: 2,
    man_bits: 1,
    bias: 1,
    specials: Specials::Finite,
};

/// `2^k` exactly, for `k` in f64's normal exponent range.
fn pow2(k: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&k));
    f64::from_bits(((k + 1023) as u64) << 52)
}

impl Minifloat {
    /// The format of a minifloat dtype (float8 except e8m0, float4).
    pub fn of(dtype: DType) -> Option<Minifloat> {
        match dtype {
            DType::F8E4M3FN => Some(F8E4M3FN),
            DType::F8E4M3FNUZ => Some(F8E4M3FNUZ),
            DType::F8E5M2 => Some(F8E5M2),
            DType::F8E5M2FNUZ => Some(F8E5M2FNUZ),
            DType::F4E2M1 => Some(F4E2M1),
            _ => None,
        }
    }

    fn sign_bit(self) -> u8 {
        1 << (self.exp_bits + self.man_bits)
    }

    /// Every exponent and mantissa bit set.
    fn magnitude_mask(self) -> u8 {
        self.sign_bit() - 1
    }

    /// Bits of the largest finite value (positive).
    fn max_bits(self) -> u8 {
        match self.specials {
            Specials::Ieee => self.magnitude_mask() - (1 << self.man_bits),
            Specials::AllOnesNan => self.magnitude_mask() - 1,
            Specials::Fnuz | Specials::Finite => self.magnitude_mask(),
        }
    }

    /// The largest finite value.
    pub fn max_value(self) -> f64 {
        self.decode(self.max_bits()) as f64
    }

    /// The value of a bit pattern (only the low `1 + exp + man` bits count).
    pub fn decode(self, bits: u8) -> f32 {
        let m = self.man_bits;
        let bits = bits & (self.sign_bit() | self.magnitude_mask());
        let negative = bits & self.sign_bit() != 0;
        let mag = bits & self.magnitude_mask();
        let exp_field = (mag >> m) as i32;
        let man = (mag & ((1 << m) - 1)) as f64;
        let exp_all_ones = (1 << self.exp_bits) - 1;
        match self.specials {
            Specials::Fnuz if bits == self.sign_bit() => return f32::NAN,
            Specials::AllOnesNan if mag == self.magnitude_mask() => {
                return if negative { -f32::NAN } else { f32::NAN };
            }
            Specials::Ieee if exp_field == exp_all_ones => {
                let v = if man == 0.0 { f32::INFINITY } else { f32::NAN };
                return if negative { -v } else { v };
            }
            _ => {}
        }
        let v = if exp_field == 0 {
            man * pow2(1 - self.bias - m as i32)
        } else {
            (pow2(m as i32) + man) * pow2(exp_field - self.bias - m as i32)
        };
        // Every value has at most 4 significant bits and an exponent well
        // inside f32's range, so the narrowing is exact.
        (if negative { -v } else { v }) as f32
    }

    /// The bit pattern of `x` rounded to nearest, ties to even. Values whose
    /// rounding exceeds the largest finite value, and infinities, become that
    /// value when `saturate` (always for float4, which has no infinity or
    /// NaN), else infinity (e5m2) or NaN. NaN keeps its sign where the
    /// format has signed NaNs; float4 maps NaN to a zero of the opposite sign,
    /// as `ml_dtypes` does.
    pub fn encode(self, x: f64, saturate: bool) -> u8 {
        let m = self.man_bits;
        let sign = if x.is_sign_negative() {
            self.sign_bit()
        } else {
            0
        };
        if x.is_nan() {
            return match self.specials {
                Specials::Ieee => sign | (((1 << self.exp_bits) - 1) << m) | (1 << (m - 1)),
                Specials::AllOnesNan => sign | self.magnitude_mask(),
                Specials::Fnuz => self.sign_bit(),
                Specials::Finite => sign ^ self.sign_bit(),
            };
        }
        let overflow = || {
            if saturate || self.specials == Specials::Finite {
                sign | self.max_bits()
            } else {
                match self.specials {
                    Specials::Ieee => sign | (((1 << self.exp_bits) - 1) << m),
                    Specials::AllOnesNan => sign | self.magnitude_mask(),
                    _ => self.sign_bit(),
                }
            }
        };
        let a = x.abs();
        if a.is_infinite() {
            return overflow();
        }
        // Exponent of the smallest normal; below it the spacing is fixed.
        let min_exp = 1 - self.bias;
        let e = if a < pow2(min_exp) {
            min_exp
        } else {
            // a >= 2^min_exp is a normal f64: its exponent field is exact.
            ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023
        };
        // Scaling by a power of two is exact, so this rounds once.
        let quantum = e - m as i32;
        let r = (a / pow2(quantum)).round_ties_even();
        if r * pow2(quantum) > self.max_value() {
            return overflow();
        }
        if r == 0.0 {
            return if self.specials == Specials::Fnuz {
                0
            } else {
                sign
            };
        }
        // With the implicit bit counted in `r`, `(e - min_exp) << m` plus `r`
        // is the exponent field and mantissa; a carry out of the mantissa
        // (r == 2^(m+1), or a subnormal rounding up to 2^m) lands in the
        // exponent field as it should. r <= 2^(m+1) and the value is at most
        // the max, so this fits the magnitude bits.
        let bits = (((e - min_exp) as u32) << m) + r as u32;
        sign | bits as u8
    }
}

/// bfloat16 nearest to `x`, ties to even, rounding once. (`half`'s own
/// `bf16::from_f64` drops the low half of the f64 mantissa before rounding,
/// which can misround ties.) Values exact in f32 round from there; others go
/// through f32 with round-to-odd, which keeps enough bits for the second
/// rounding to be correct.
pub fn bf16_from_f64(x: f64) -> half::bf16 {
    let f = x as f32;
    if f as f64 == x || x.is_nan() {
        return half::bf16::from_f32(f);
    }
    // Truncate toward zero (stepping back if `as` rounded away from zero,
    // including to infinity), then set the lowest bit as the sticky bit.
    let mut bits = f.to_bits();
    if (f as f64).abs() > x.abs() {
        bits -= 1;
    }
    half::bf16::from_f32(f32::from_bits(bits | 1))
}

/// Rounding of a cast to float8 e8m0 (Cast's `round_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum E8M0Round {
    /// Any fraction rounds the exponent up (the default).
    #[default]
    Up,
    /// The fraction is dropped.
    Down,
    /// Round to the nearer power of two.
    Nearest,
}

impl E8M0Round {
    /// The ONNX attribute spelling.
    pub fn name(self) -> &'static str {
        match self {
            E8M0Round::Up => "up",
            E8M0Round::Down => "down",
            E8M0Round::Nearest => "nearest",
        }
    }

    pub fn from_name(s: &str) -> Option<E8M0Round> {
        [E8M0Round::Up, E8M0Round::Down, E8M0Round::Nearest]
            .into_iter()
            .find(|r| r.name() == s)
    }
}

/// The value of a float8 e8m0 pattern: `2^(bits - 127)`, NaN for `0xFF`.
pub fn e8m0_decode(bits: u8) -> f32 {
    if bits == 0xff {
        f32::NAN
    } else {
        // 2^-127 is an f32 subnormal; 2^127 the largest power of two.
        pow2(bits as i32 - 127) as f32
    }
}

/// float8 e8m0 of an f32, exactly as the ONNX reference `to_float8e8m0`:
/// the result is f32's exponent field (so the sign is ignored and zero gives
/// `2^-127`), moved up by the rounding mode; NaN and infinities give NaN.
/// With `saturate`, rounding never goes past `2^127` (`0xFE`); without, it
/// can reach `0xFF`, the NaN.
pub fn e8m0_encode(x: f32, saturate: bool, mode: E8M0Round) -> u8 {
    let f = x.to_bits();
    let exponent = (f >> 23) & 0xff;
    if exponent == 0xff {
        return 0xff;
    }
    let round_up = match mode {
        E8M0Round::Down => false,
        E8M0Round::Up => f & 0x7f_ffff != 0,
        E8M0Round::Nearest => {
            let guard = f & 0x40_0000 != 0;
            let round = f & 0x20_0000 != 0;
            let sticky = f & 0x1f_ffff != 0;
            let lsb = exponent > 0;
            guard && (round || sticky || lsb)
        }
    };
    if round_up && !(saturate && exponent == 0xfe) {
        (exponent + 1) as u8
    } else {
        exponent as u8
    }
}

/// Wraps an integer into a 4- or 2-bit integer type (two's complement
/// truncation: keep the low bits, sign-extend for the signed types). Other
/// dtypes return the value unchanged.
pub fn wrap_small_int(dtype: DType, v: i128) -> i128 {
    match dtype {
        DType::I4 => ((v as i8) << 4 >> 4) as i128,
        DType::U4 => v & 0xf,
        DType::I2 => ((v as i8) << 6 >> 6) as i128,
        DType::U2 => v & 0x3,
        _ => v,
    }
}

/// Unpacks `n` codes of `bits` bits (4 or 2) from `bytes`, first element in
/// the least significant bits, as ONNX stores sub-byte types. Codes past the
/// end of `bytes` are 0 (callers check the length).
pub fn unpack(bits: usize, bytes: &[u8], n: usize) -> Vec<u8> {
    let per_byte = 8 / bits;
    let mask = ((1u16 << bits) - 1) as u8;
    (0..n)
        .map(|i| {
            let byte = bytes.get(i / per_byte).copied().unwrap_or(0);
            (byte >> ((i % per_byte) * bits)) & mask
        })
        .collect()
}

/// Packs codes of `bits` bits (4 or 2) into bytes, the inverse of [`unpack`]
/// (unused high bits of the last byte are 0; higher bits of each code are
/// dropped).
pub fn pack(bits: usize, codes: &[u8]) -> Vec<u8> {
    let per_byte = 8 / bits;
    let mask = ((1u16 << bits) - 1) as u8;
    codes
        .chunks(per_byte)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u8, |acc, (k, &v)| acc | ((v & mask) << (k * bits)))
        })
        .collect()
}

/// The signed value of a `bits`-bit two's complement code.
pub fn sign_extend(code: u8, bits: usize) -> i8 {
    let shift = 8 - bits as u32;
    ((code << shift) as i8) >> shift
}

/// A float converted to a 4- or 2-bit integer type as `ml_dtypes` does:
/// truncated toward zero, then wrapped. NaN, infinities and magnitudes of
/// 2^63 or more give 0 (floats that large are multiples of 16 anyway).
pub fn small_int_from_f64(dtype: DType, x: f64) -> i128 {
    let i = if x.is_finite() && x.abs() < pow2(63) {
        x.trunc() as i128
    } else {
        0
    };
    wrap_small_int(dtype, i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(f: Minifloat, x: f32, sat: bool) -> u8 {
        f.encode(x as f64, sat)
    }

    #[test]
    fn decode_known_values() {
        assert_eq!(F8E4M3FN.decode(0x7e), 448.0);
        assert_eq!(F8E4M3FN.decode(0x01), 2f32.powi(-9));
        assert!(F8E4M3FN.decode(0x7f).is_nan() && F8E4M3FN.decode(0xff).is_nan());
        assert_eq!(F8E4M3FN.decode(0x80), 0.0);
        assert!(F8E4M3FN.decode(0x80).is_sign_negative());
        assert_eq!(F8E4M3FNUZ.decode(0x7f), 240.0);
        assert!(F8E4M3FNUZ.decode(0x80).is_nan());
        assert_eq!(F8E4M3FNUZ.decode(0x01), 2f32.powi(-10));
        assert_eq!(F8E5M2.decode(0x7b), 57344.0);
        assert_eq!(F8E5M2.decode(0x7c), f32::INFINITY);
        assert_eq!(F8E5M2.decode(0xfc), f32::NEG_INFINITY);
        assert!(F8E5M2.decode(0x7e).is_nan());
        assert_eq!(F8E5M2FNUZ.decode(0x7f), 57344.0);
        assert_eq!(F8E5M2FNUZ.decode(0x01), 2f32.powi(-17));
        let f4: Vec<f32> = (0..16).map(|b| F4E2M1.decode(b)).collect();
        assert_eq!(
            f4,
            [
                0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0,
                -6.0
            ]
        );
    }

    #[test]
    fn encode_inverts_decode() {
        for f in [F8E4M3FN, F8E4M3FNUZ, F8E5M2, F8E5M2FNUZ, F4E2M1] {
            let n = 1u16 << (1 + f.exp_bits + f.man_bits);
            for b in 0..n {
                let b = b as u8;
                let v = f.decode(b);
                if v.is_nan() {
                    continue;
                }
                if f.specials == Specials::Fnuz && b == 0 {
                    assert_eq!(enc(f, -0.0, true), 0);
                }
                assert_eq!(enc(f, v, false), b, "{f:?} {b:#x} {v}");
            }
        }
    }

    #[test]
    fn encode_rounds_to_nearest_even_and_handles_overflow() {
        // e4m3fn: 464 ties between 448 and (non-existent) 480: even is 448.
        assert_eq!(enc(F8E4M3FN, 464.0, false), 0x7e);
        assert_eq!(enc(F8E4M3FN, 470.0, false), 0x7f);
        assert_eq!(enc(F8E4M3FN, 470.0, true), 0x7e);
        assert_eq!(enc(F8E4M3FN, f32::INFINITY, false), 0x7f);
        assert_eq!(enc(F8E4M3FN, f32::NEG_INFINITY, false), 0xff);
        assert_eq!(enc(F8E4M3FN, f32::NEG_INFINITY, true), 0xfe);
        assert_eq!(enc(F8E4M3FN, f32::NAN, true), 0x7f);
        assert_eq!(enc(F8E4M3FN, -1e-7, true), 0x80);
        // e5m2: 61440 ties between 57344 (odd mantissa) and 65536: overflow.
        assert_eq!(enc(F8E5M2, 61440.0, false), 0x7c);
        assert_eq!(enc(F8E5M2, 61439.0, false), 0x7b);
        assert_eq!(enc(F8E5M2, 1e6, true), 0x7b);
        assert_eq!(enc(F8E5M2, -1e6, false), 0xfc);
        assert_eq!(enc(F8E5M2, f32::NAN, false), 0x7e);
        // fnuz: no negative zero; NaN and overflow are 0x80.
        assert_eq!(enc(F8E4M3FNUZ, -1e-7, true), 0x00);
        assert_eq!(enc(F8E4M3FNUZ, -0.0, true), 0x00);
        assert_eq!(enc(F8E4M3FNUZ, 1e6, false), 0x80);
        assert_eq!(enc(F8E5M2FNUZ, f32::NAN, true), 0x80);
        assert_eq!(enc(F8E5M2FNUZ, -1e6, true), 0xff);
        // Subnormals: half the smallest subnormal ties to zero, a bit more
        // rounds up; a subnormal rounding up to the smallest normal.
        assert_eq!(enc(F8E4M3FN, 2f32.powi(-10), true), 0x00);
        assert_eq!(enc(F8E4M3FN, 2f32.powi(-10) * 1.01, true), 0x01);
        assert_eq!(enc(F8E4M3FN, 2f32.powi(-6) * 0.99, true), 0x08);
        // Mantissa carry into the exponent: 0.47892547 -> 0.46875 or 0.5.
        assert_eq!(F8E4M3FN.decode(enc(F8E4M3FN, 0.47892547, true)), 0.46875);
        assert_eq!(F8E4M3FN.decode(enc(F8E4M3FN, 0.49968487, true)), 0.5);
        // float4: always saturating; ties to even; NaN to -0.
        let f4 = |x: f32| F4E2M1.decode(enc(F4E2M1, x, false));
        assert_eq!(f4(0.25), 0.0);
        assert_eq!(f4(0.75), 1.0);
        assert_eq!(f4(2.5), 2.0);
        assert_eq!(f4(5.0), 4.0);
        assert_eq!(f4(1e6), 6.0);
        assert_eq!(f4(f32::NEG_INFINITY), -6.0);
        assert_eq!(enc(F4E2M1, f32::NAN, true), 0x8);
        // Huge and tiny f64 values.
        assert_eq!(F8E4M3FN.encode(1e300, true), 0x7e);
        assert_eq!(F8E4M3FN.encode(-1e-300, true), 0x80);
        assert_eq!(F8E4M3FN.encode(f64::MIN_POSITIVE / 4.0, true), 0x00);
    }

    #[test]
    fn e8m0_matches_the_reference() {
        // to_float8e8m0([0, 0.124, 0.25, 0.5, 1.1, 2, 4, 8]) with "up".
        let xs = [0.0f32, 0.124, 0.25, 0.5, 1.1, 2.0, 4.0, 8.0];
        let up: Vec<u8> = xs
            .iter()
            .map(|&x| e8m0_encode(x, true, E8M0Round::Up))
            .collect();
        assert_eq!(up, [0, 124, 125, 126, 128, 128, 129, 130]);
        assert_eq!(e8m0_encode(1.1, true, E8M0Round::Down), 127);
        assert_eq!(e8m0_encode(1.4, true, E8M0Round::Nearest), 127);
        assert_eq!(e8m0_encode(1.6, true, E8M0Round::Nearest), 128);
        // Exactly 1.5: guard set, lsb (exponent > 0) set: rounds up.
        assert_eq!(e8m0_encode(1.5, true, E8M0Round::Nearest), 128);
        assert_eq!(e8m0_encode(f32::MAX, true, E8M0Round::Up), 0xfe);
        assert_eq!(e8m0_encode(f32::MAX, false, E8M0Round::Up), 0xff);
        assert_eq!(e8m0_encode(f32::INFINITY, true, E8M0Round::Up), 0xff);
        assert_eq!(e8m0_encode(-4.0, true, E8M0Round::Up), 129);
        assert_eq!(e8m0_decode(127), 1.0);
        assert_eq!(e8m0_decode(0), 2f32.powi(-127));
        assert_eq!(e8m0_decode(254), 2f32.powi(127));
        assert!(e8m0_decode(255).is_nan());
        assert_eq!(E8M0Round::from_name("nearest"), Some(E8M0Round::Nearest));
        assert_eq!(E8M0Round::from_name("x"), None);
    }

    #[test]
    fn bf16_rounds_once() {
        use half::bf16;
        let b = |x: f64| bf16_from_f64(x).to_bits();
        // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: even is 1.
        assert_eq!(b(1.0 + 2f64.powi(-8)), 0x3f80);
        // A hair above the tie rounds up, even below f32 precision (an f32
        // conversion would give the tie and then round down).
        assert_eq!(b(1.0 + 2f64.powi(-8) + 2f64.powi(-40)), 0x3f81);
        assert_eq!(b(-(1.0 + 2f64.powi(-8) + 2f64.powi(-40))), 0xbf81);
        assert_eq!(b(1e300), bf16::INFINITY.to_bits());
        assert_eq!(b(f64::NEG_INFINITY), bf16::NEG_INFINITY.to_bits());
        assert!(bf16_from_f64(f64::NAN).is_nan());
        assert_eq!(b(1e-300), 0);
        // Exactly representable f32 values: plain RNE.
        assert_eq!(
            b(0.47892547f32 as f64),
            bf16::from_f32(0.47892547).to_bits()
        );
    }

    #[test]
    fn packing_is_little_end_first() {
        assert_eq!(pack(4, &[1, 2, 3]), [0x21, 0x03]);
        assert_eq!(unpack(4, &[0x21, 0x03], 3), [1, 2, 3]);
        assert_eq!(pack(2, &[1, 2, 3, 0, 3]), [0b00_11_10_01, 0b11]);
        assert_eq!(unpack(2, &[0b00_11_10_01, 0b11], 5), [1, 2, 3, 0, 3]);
        assert!(pack(4, &[]).is_empty() && unpack(4, &[], 0).is_empty());
        assert_eq!(sign_extend(0xf, 4), -1);
        assert_eq!(sign_extend(0x8, 4), -8);
        assert_eq!(sign_extend(0x7, 4), 7);
        assert_eq!(sign_extend(0b10, 2), -2);
        assert_eq!(sign_extend(0b01, 2), 1);
    }

    #[test]
    fn small_ints_wrap() {
        let i4: Vec<i128> = (-9..=16).map(|v| wrap_small_int(DType::I4, v)).collect();
        assert_eq!(i4[..3], [7, -8, -7]);
        assert_eq!(i4[24..], [-1, 0]);
        assert_eq!(wrap_small_int(DType::U4, -1), 15);
        assert_eq!(wrap_small_int(DType::U4, 16), 0);
        assert_eq!(wrap_small_int(DType::I2, 2), -2);
        assert_eq!(wrap_small_int(DType::I2, -3), 1);
        assert_eq!(wrap_small_int(DType::U2, 7), 3);
        assert_eq!(wrap_small_int(DType::I32, 1 << 40), 1 << 40);
        assert_eq!(small_int_from_f64(DType::I4, -7.9), -7);
        assert_eq!(small_int_from_f64(DType::U4, 17.5), 1);
        assert_eq!(small_int_from_f64(DType::U4, f64::NAN), 0);
        assert_eq!(small_int_from_f64(DType::U4, 3e38), 0);
        assert_eq!(small_int_from_f64(DType::U2, -f64::INFINITY), 0);
    }
}
