//! Reads `.npy` / `.npz` files written by NumPy (tests/data/npy, made by
//! tests/data/npy/make.py) and checks values, plus that mlc writes the same
//! bytes NumPy does for C-order little-endian arrays.

use std::path::{Path, PathBuf};

use half::f16;
use mlc::formats::npy::{npy_bytes, read_npy, read_npz};
use mlc::ir::TensorData;
use mlc::{DType, Tensor};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/npy")
        .join(name)
}

fn f64_bits(t: &Tensor) -> Vec<u64> {
    t.to_f64_vec().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn every_dtype_matches_make_py() {
    let inf = f64::INFINITY;
    let floats = |last: f64| vec![0.0, -1.5, inf, -inf, f64::NAN, last];
    let cases: Vec<(&str, DType, Vec<f64>)> = vec![
        ("f4", DType::F32, floats(3.25e-8f32 as f64)),
        ("f8", DType::F64, floats(1e300)),
        ("f2", DType::F16, floats(65504.0)),
        ("i1", DType::I8, vec![-128.0, -1.0, 0.0, 1.0, 2.0, 127.0]),
        (
            "i2",
            DType::I16,
            vec![-32768.0, -1.0, 0.0, 1.0, 2.0, 32767.0],
        ),
        (
            "i4",
            DType::I32,
            vec![-2147483648.0, -1.0, 0.0, 1.0, 2.0, 2147483647.0],
        ),
        ("u1", DType::U8, vec![0.0, 1.0, 2.0, 3.0, 128.0, 255.0]),
        ("u2", DType::U16, vec![0.0, 1.0, 2.0, 3.0, 32768.0, 65535.0]),
        (
            "u4",
            DType::U32,
            vec![0.0, 1.0, 2.0, 3.0, 2147483648.0, 4294967295.0],
        ),
        ("b1", DType::Bool, vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0]),
    ];
    for (code, dtype, want) in cases {
        let path = data(&format!("{code}.npy"));
        let t = read_npy(&path).unwrap();
        assert_eq!(t.dtype(), dtype, "{code}");
        assert_eq!(t.shape(), &[2, 3], "{code}");
        let got = t.to_f64_vec();
        for (g, w) in got.iter().zip(&want) {
            assert!(
                g == w || (g.is_nan() && w.is_nan()),
                "{code}: {got:?} vs {want:?}"
            );
        }
        // Writing it back gives NumPy's exact bytes.
        assert_eq!(
            npy_bytes(&t).unwrap(),
            std::fs::read(&path).unwrap(),
            "{code} bytes"
        );
    }
    // 64-bit extremes do not survive f64, check them exactly.
    let i8s = read_npy(&data("i8.npy")).unwrap();
    assert_eq!(i8s.as_i64().unwrap(), &[i64::MIN, -1, 0, 1, 2, i64::MAX]);
    let u8s = read_npy(&data("u8.npy")).unwrap();
    assert!(u8s.data() == &TensorData::U64(vec![0, 1, 2, 3, 1 << 63, u64::MAX]));
    for code in ["i8", "u8"] {
        let path = data(&format!("{code}.npy"));
        let t = read_npy(&path).unwrap();
        assert_eq!(
            npy_bytes(&t).unwrap(),
            std::fs::read(&path).unwrap(),
            "{code} bytes"
        );
    }
    let f2 = read_npy(&data("f2.npy")).unwrap();
    let TensorData::F16(v) = f2.data() else {
        panic!("f2 is {:?}", f2.dtype())
    };
    assert_eq!(v[5], f16::from_f32(65504.0));
}

#[test]
fn special_layouts() {
    let s = read_npy(&data("scalar_f8.npy")).unwrap();
    assert_eq!((s.shape(), s.to_f64_vec()), (&[][..], vec![2.5]));
    assert_eq!(
        npy_bytes(&s).unwrap(),
        std::fs::read(data("scalar_f8.npy")).unwrap()
    );

    let e = read_npy(&data("empty_i4.npy")).unwrap();
    assert_eq!(
        (e.shape(), e.dtype(), e.numel()),
        (&[0, 3][..], DType::I32, 0)
    );

    let f = read_npy(&data("fortran_i4.npy")).unwrap();
    assert_eq!(f.shape(), &[2, 3, 4]);
    assert_eq!(f.to_i64_vec().unwrap(), (0..24).collect::<Vec<i64>>());

    let b = read_npy(&data("big_i4.npy")).unwrap();
    assert_eq!((b.dtype(), b.shape()), (DType::I32, &[2, 3][..]));
    assert_eq!(b.to_i64_vec().unwrap(), vec![0, 1, 2, 3, 4, 5]);
    let b = read_npy(&data("big_f8.npy")).unwrap();
    assert_eq!(
        f64_bits(&b),
        f64_bits(&Tensor::new(vec![3], TensorData::F64(vec![1.5, -2.0, 1e-300])).unwrap())
    );

    for v in ["v2_f4.npy", "v3_f4.npy"] {
        let t = read_npy(&data(v)).unwrap();
        assert_eq!(t.shape(), &[3, 2], "{v}");
        assert_eq!(t.as_f32().unwrap(), &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "{v}");
    }
}

#[test]
fn npz_stored_and_compressed() {
    for name in ["savez.npz", "savez_compressed.npz"] {
        let arrays = read_npz(&data(name)).unwrap();
        let names: Vec<&str> = arrays.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["weight", "bias", "flag"], "{name}");
        let w = &arrays[0].1;
        assert_eq!(w.shape(), &[3, 4]);
        assert_eq!(
            w.as_f32().unwrap(),
            (0..12).map(|x| x as f32).collect::<Vec<_>>()
        );
        assert_eq!(arrays[1].1.as_i64().unwrap(), &[1, -2, 3]);
        assert_eq!(arrays[2].1.shape(), &[] as &[usize]);
        assert_eq!(arrays[2].1.as_bool().unwrap(), &[true]);
    }
}
