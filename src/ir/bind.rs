//! Checking tensors against a graph's inputs: dtypes, shapes and the sizes
//! symbolic dims take. One set of rules and one wording for every caller
//! (the interpreter, specialization, plans, sessions and the CLI's named
//! inputs in [`crate::inputs::bind`]), each error listing what the model
//! expects.

use super::{DType, Graph, SymbolBindings, ValueId};
use crate::{Error, Result};

/// The model's inputs as `name: dtype[dims]`, comma separated.
pub fn expected_inputs(g: &Graph) -> String {
    let list: Vec<String> = g.inputs.iter().map(|&id| input_text(g, id)).collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

fn input_text(g: &Graph, id: ValueId) -> String {
    let v = g.value(id);
    format!("{}: {}{}", v.name, v.ty.dtype, v.ty.shape)
}

/// The error for `given` inputs where the model takes another number.
pub fn wrong_count(g: &Graph, given: usize) -> Error {
    Error::Input {
        name: "*".into(),
        message: format!(
            "the model takes {} input(s), {given} were given (the model's inputs: {})",
            g.inputs.len(),
            expected_inputs(g)
        ),
    }
}

/// The error for a name that is not one of the model's inputs.
pub fn unknown_input(g: &Graph, name: &str) -> Error {
    Error::Input {
        name: name.to_string(),
        message: format!(
            "the model has no input of this name (inputs: {})",
            expected_inputs(g)
        ),
    }
}

/// The error for input `id` given no value.
pub fn missing_input(g: &Graph, id: ValueId) -> Error {
    Error::Input {
        name: g.value(id).name.clone(),
        message: format!(
            "no value given for this input (expects {}{}; the model's inputs: {})",
            g.ty(id).dtype,
            g.ty(id).shape,
            expected_inputs(g)
        ),
    }
}

/// The symbolic dims of the model's inputs, in order of appearance.
pub fn input_dims(g: &Graph) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for &id in &g.inputs {
        for d in g.ty(id).shape.dims() {
            if let super::Dim::Sym(s) = d {
                if !names.contains(s) {
                    names.push(s.clone());
                }
            }
        }
    }
    names
}

/// Checks that every name in `dims` is a symbolic dim of some input.
pub fn check_dim_names<'a>(g: &Graph, dims: impl IntoIterator<Item = &'a String>) -> Result<()> {
    let known = input_dims(g);
    for name in dims {
        if !known.contains(name) {
            return Err(Error::Dim {
                name: name.clone(),
                message: format!(
                    "no input of the model has a dim of this name (dims: {}; inputs: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    },
                    expected_inputs(g)
                ),
            });
        }
    }
    Ok(())
}

/// Checks one tensor (its dtype and shape) against input `id`, binding the
/// input's symbolic dims in `bindings`.
pub fn check_input(
    g: &Graph,
    id: ValueId,
    dtype: DType,
    shape: &[usize],
    bindings: &mut SymbolBindings,
) -> Result<()> {
    let v = g.value(id);
    let wrong = || Error::Input {
        name: v.name.clone(),
        message: format!("expects {}{}, got {dtype}{shape:?}", v.ty.dtype, v.ty.shape),
    };
    if dtype != v.ty.dtype || !v.ty.shape.admits(shape) {
        return Err(wrong());
    }
    bindings
        .bind(&v.ty.shape, shape)
        .map_err(|(sym, earlier, here)| Error::Input {
            name: v.name.clone(),
            message: format!(
                "dim '{sym}' is {here} here but {earlier} in an earlier input (the model's inputs: {})",
                expected_inputs(g)
            ),
        })
}

/// Checks positional inputs (dtype and shape of each, in the order of
/// `g.inputs`) and returns the sizes their symbolic dims take.
pub fn check_inputs<'a>(
    g: &Graph,
    given: impl ExactSizeIterator<Item = (DType, &'a [usize])>,
) -> Result<SymbolBindings> {
    if given.len() != g.inputs.len() {
        return Err(wrong_count(g, given.len()));
    }
    let mut bindings = SymbolBindings::default();
    for (&id, (dtype, shape)) in g.inputs.iter().zip(given) {
        check_input(g, id, dtype, shape, &mut bindings)?;
    }
    Ok(bindings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Dim, Shape, TensorType};

    fn graph() -> Graph {
        let mut g = Graph::new("t", 17);
        let shape = Shape(vec![Dim::Sym("batch".into()), Dim::Known(3)]);
        g.add_input("x", TensorType::new(DType::F32, shape.clone()));
        g.add_input("ids", TensorType::new(DType::I64, shape));
        g
    }

    #[test]
    fn one_wording_for_each_mistake() {
        let g = graph();
        let err = |given: Vec<(DType, &[usize])>| {
            check_inputs(&g, given.into_iter()).unwrap_err().to_string()
        };
        assert_eq!(
            err(vec![(DType::F32, &[2, 3])]),
            "input '*': the model takes 2 input(s), 1 were given (the model's inputs: x: f32[batch,3], ids: i64[batch,3])"
        );
        assert_eq!(
            err(vec![(DType::I64, &[2, 3]), (DType::I64, &[2, 3])]),
            "input 'x': expects f32[batch,3], got i64[2, 3]"
        );
        assert_eq!(
            err(vec![(DType::F32, &[2, 4]), (DType::I64, &[2, 3])]),
            "input 'x': expects f32[batch,3], got f32[2, 4]"
        );
        assert!(err(vec![(DType::F32, &[2, 3]), (DType::I64, &[5, 3])])
            .starts_with("input 'ids': dim 'batch' is 5 here but 2 in an earlier input"));
        let b = check_inputs(
            &g,
            [(DType::F32, &[4usize, 3][..]), (DType::I64, &[4, 3][..])].into_iter(),
        )
        .unwrap();
        assert_eq!(b.0.get("batch"), Some(&4));
    }
}
