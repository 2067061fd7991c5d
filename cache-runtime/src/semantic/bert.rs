//! The forward pass of a BERT encoder with mean pooling: what sentence-transformers computes for
//! all-MiniLM-L6-v2 (and any BERT-architecture model of its family), written out over `ndarray`.
//!
//! Written by hand rather than taken from an ML framework because the whole model is six kinds of
//! operation (embedding lookup, matrix product, layer norm, softmax, GELU, mean) and a framework costs
//! minutes of compile time for every build of the workspace (docs/SEMANTIC.md has the numbers). The
//! dense layers' products and GELU run in the `cache-kernels` crate, over weights laid out for the product
//! at load time; the small products inside attention go to `matrixmultiply` (through ndarray).
//!
//! Sequences are packed, not padded: the tokens of every sequence in a batch are rows of one matrix, so
//! the dense layers run once for the whole batch, while attention runs per sequence over its own rows.
//! A text's vector is therefore the same whether it is embedded alone or in a batch of any others.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut1, Axis, Slice};
use safetensors::{Dtype, SafeTensors};

use cache_kernels::PanelMatrix;
use serde::Deserialize;

/// The fields of a Hugging Face `config.json` that the forward pass needs.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BertConfig {
    pub(crate) vocab_size: usize,
    pub(crate) hidden_size: usize,
    pub(crate) num_hidden_layers: usize,
    pub(crate) num_attention_heads: usize,
    pub(crate) intermediate_size: usize,
    pub(crate) max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_position_type")]
    position_embedding_type: String,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".to_owned()
}
fn default_position_type() -> String {
    "absolute".to_owned()
}

impl BertConfig {
    /// Parses and checks `config.json`: only what this forward pass computes exactly is accepted.
    pub(crate) fn from_json(json: &[u8]) -> Result<BertConfig, String> {
        let config: BertConfig =
            serde_json::from_slice(json).map_err(|e| format!("config.json is not a BERT config: {e}"))?;
        if config.hidden_act != "gelu" {
            return Err(format!("hidden_act {:?} is not supported (only \"gelu\")", config.hidden_act));
        }
        if config.position_embedding_type != "absolute" {
            return Err(format!("position_embedding_type {:?} is not supported", config.position_embedding_type));
        }
        let sizes = [
            config.vocab_size,
            config.hidden_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.intermediate_size,
            config.max_position_embeddings,
            config.type_vocab_size,
        ];
        if sizes.contains(&0) || config.hidden_size % config.num_attention_heads != 0 {
            return Err("config.json has a zero size, or hidden_size is not a multiple of num_attention_heads".into());
        }
        Ok(config)
    }
}

/// A dense layer, `y = x·Wᵀ + b`, its weights laid out for the product once, at load time
/// (`cache_kernels`: the product was a third slower when a general matrix product re-laid them every call).
#[derive(Debug)]
struct Dense {
    weight: PanelMatrix,
    bias: Vec<f32>,
}

impl Dense {
    /// `weight` is `[outputs, inputs]`, as the model file stores it.
    fn new(weight: ArrayView2<'_, f32>, bias: Array1<f32>) -> Result<Dense, String> {
        let (outputs, inputs) = weight.dim();
        let rows = weight.as_standard_layout();
        let rows = rows.as_slice().ok_or("a standard-layout array is contiguous")?;
        let weight = PanelMatrix::from_rows(rows, outputs, inputs).map_err(|e| e.to_string())?;
        if bias.len() != outputs {
            return Err(format!("a bias of {} for {outputs} outputs", bias.len()));
        }
        Ok(Dense { weight, bias: bias.to_vec() })
    }

    fn forward(&self, x: &Array2<f32>) -> Result<Array2<f32>, String> {
        let x = x.as_standard_layout();
        let mut out = Array2::zeros((x.nrows(), self.weight.outputs()));
        let input = x.as_slice().ok_or("a standard-layout array is contiguous")?;
        let output = out.as_slice_mut().ok_or("a new array is contiguous")?;
        self.weight.product(input, &self.bias, output).map_err(|e| e.to_string())?;
        Ok(out)
    }
}

#[derive(Debug)]
struct LayerNorm {
    gamma: Array1<f32>,
    beta: Array1<f32>,
    eps: f32,
}

impl LayerNorm {
    /// Normalizes every row of `x` in place.
    fn apply(&self, x: &mut Array2<f32>) {
        for mut row in x.axis_iter_mut(Axis(0)) {
            let n = row.len() as f32;
            let mean = row.sum() / n;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
            let inv = 1.0 / (var + self.eps).sqrt();
            row.iter_mut()
                .zip(self.gamma.iter().zip(self.beta.iter()))
                .for_each(|(v, (g, b))| *v = (*v - mean) * inv * g + b);
        }
    }
}

#[derive(Debug)]
struct Layer {
    /// Query, key and value projections fused into one layer of `3·hidden` outputs: one product, not three.
    qkv: Dense,
    attention_out: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
}

/// A loaded BERT encoder.
#[derive(Debug)]
pub(crate) struct Bert {
    config: BertConfig,
    word: Array2<f32>,
    position: Array2<f32>,
    token_type: Array1<f32>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
}

/// Reads the tensors of a safetensors file by name, accepting the `bert.` prefix some exports add.
struct Tensors<'a> {
    file: SafeTensors<'a>,
    prefix: &'static str,
}

impl Tensors<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        let full = format!("{}{name}", self.prefix);
        let view = self.file.tensor(&full).map_err(|e| format!("tensor {full}: {e}"))?;
        if view.shape() != shape {
            return Err(format!("tensor {full} has shape {:?}, expected {shape:?}", view.shape()));
        }
        if view.dtype() != Dtype::F32 {
            return Err(format!("tensor {full} is {:?}; only F32 weights are supported", view.dtype()));
        }
        Ok(view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Array2<f32>, String> {
        Array2::from_shape_vec((rows, cols), self.get(name, &[rows, cols])?).map_err(|e| e.to_string())
    }

    fn vector(&self, name: &str, len: usize) -> Result<Array1<f32>, String> {
        Ok(Array1::from_vec(self.get(name, &[len])?))
    }

    fn dense(&self, name: &str, out: usize, inp: usize) -> Result<Dense, String> {
        let weight = self.matrix(&format!("{name}.weight"), out, inp)?;
        Dense::new(weight.view(), self.vector(&format!("{name}.bias"), out)?)
    }

    fn norm(&self, name: &str, len: usize, eps: f64) -> Result<LayerNorm, String> {
        Ok(LayerNorm {
            gamma: self.vector(&format!("{name}.weight"), len)?,
            beta: self.vector(&format!("{name}.bias"), len)?,
            eps: eps as f32,
        })
    }
}

impl Bert {
    /// Builds the encoder from the bytes of a `model.safetensors` file.
    pub(crate) fn load(config: BertConfig, safetensors: &[u8]) -> Result<Bert, String> {
        let file = SafeTensors::deserialize(safetensors).map_err(|e| format!("not a safetensors file: {e}"))?;
        let prefix = if file.tensor("embeddings.word_embeddings.weight").is_ok() { "" } else { "bert." };
        let t = Tensors { file, prefix };
        let h = config.hidden_size;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Self::load_layer(&t, &config, &format!("encoder.layer.{i}")))
            .collect::<Result<Vec<_>, String>>()?;
        let token_types = t.matrix("embeddings.token_type_embeddings.weight", config.type_vocab_size, h)?;
        Ok(Bert {
            word: t.matrix("embeddings.word_embeddings.weight", config.vocab_size, h)?,
            position: t.matrix("embeddings.position_embeddings.weight", config.max_position_embeddings, h)?,
            // Every token of a single-sentence input has token type 0.
            token_type: token_types.row(0).to_owned(),
            embedding_norm: t.norm("embeddings.LayerNorm", h, config.layer_norm_eps)?,
            layers,
            config,
        })
    }

    fn load_layer(t: &Tensors<'_>, config: &BertConfig, name: &str) -> Result<Layer, String> {
        let (h, i, eps) = (config.hidden_size, config.intermediate_size, config.layer_norm_eps);
        // The three `[h, h]` weights stacked as one `[3h, h]`, their biases likewise: one product.
        let weights = ["query", "key", "value"]
            .map(|p| t.matrix(&format!("{name}.attention.self.{p}.weight"), h, h))
            .into_iter()
            .collect::<Result<Vec<_>, String>>()?;
        let biases = ["query", "key", "value"]
            .map(|p| t.vector(&format!("{name}.attention.self.{p}.bias"), h))
            .into_iter()
            .collect::<Result<Vec<_>, String>>()?;
        let views: Vec<ArrayView2<'_, f32>> = weights.iter().map(|w| w.view()).collect();
        let bias_views: Vec<_> = biases.iter().map(|b| b.view()).collect();
        let qkv = Dense::new(
            ndarray::concatenate(Axis(0), &views).map_err(|e| e.to_string())?.view(),
            ndarray::concatenate(Axis(0), &bias_views).map_err(|e| e.to_string())?,
        )?;
        Ok(Layer {
            qkv,
            attention_out: t.dense(&format!("{name}.attention.output.dense"), h, h)?,
            attention_norm: t.norm(&format!("{name}.attention.output.LayerNorm"), h, eps)?,
            intermediate: t.dense(&format!("{name}.intermediate.dense"), i, h)?,
            output: t.dense(&format!("{name}.output.dense"), h, i)?,
            output_norm: t.norm(&format!("{name}.output.LayerNorm"), h, eps)?,
        })
    }

    /// The longest sequence (in tokens, special tokens included) the position embeddings cover.
    pub(crate) fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// The length of the vectors [`Bert::embed`] returns.
    pub(crate) fn dimensions(&self) -> usize {
        self.config.hidden_size
    }

    /// The mean-pooled, L2-normalized embedding of each token sequence. Every id must be below the
    /// vocabulary size and every sequence non-empty and at most [`Bert::max_positions`] long; the caller
    /// (the tokenizer of the same model) guarantees both, and a violation is reported, not a panic.
    pub(crate) fn embed<S: AsRef<[u32]>>(&self, sequences: &[S]) -> Result<Vec<Vec<f32>>, String> {
        let mut spans = Vec::with_capacity(sequences.len());
        let mut start = 0;
        for ids in sequences {
            let ids = ids.as_ref();
            if ids.is_empty() || ids.len() > self.max_positions() {
                return Err(format!("a sequence of {} tokens (1 to {} are possible)", ids.len(), self.max_positions()));
            }
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.config.vocab_size) {
                return Err(format!("token id {bad} is outside the vocabulary"));
            }
            spans.push((start, ids.len()));
            start += ids.len();
        }
        let mut x = self.embeddings(sequences, start);
        for layer in &self.layers {
            x = self.layer(layer, x, &spans)?;
        }
        Ok(spans
            .iter()
            .map(|&(start, len)| mean_normalized(x.slice_axis(Axis(0), Slice::from(start..start + len))))
            .collect())
    }

    fn embeddings<S: AsRef<[u32]>>(&self, sequences: &[S], rows: usize) -> Array2<f32> {
        let mut x = Array2::zeros((rows, self.config.hidden_size));
        let tokens = sequences.iter().flat_map(|ids| ids.as_ref().iter().enumerate());
        for (mut row, (position, &id)) in x.axis_iter_mut(Axis(0)).zip(tokens) {
            row.assign(&self.word.row(id as usize));
            row += &self.position.row(position);
            row += &self.token_type;
        }
        self.embedding_norm.apply(&mut x);
        x
    }

    fn layer(&self, layer: &Layer, x: Array2<f32>, spans: &[(usize, usize)]) -> Result<Array2<f32>, String> {
        let h = self.config.hidden_size;
        let heads = self.config.num_attention_heads;
        let d = h / heads;
        let scale = 1.0 / (d as f32).sqrt();
        let qkv = layer.qkv.forward(&x)?;
        let mut context = Array2::<f32>::zeros(x.raw_dim());
        for &(start, len) in spans {
            let rows = start..start + len;
            for head in 0..heads {
                let cols = head * d..(head + 1) * d;
                let q = block(&qkv, rows.clone(), cols.clone());
                let k = block(&qkv, rows.clone(), h + cols.start..h + cols.end);
                let v = block(&qkv, rows.clone(), 2 * h + cols.start..2 * h + cols.end);
                let mut scores = q.dot(&k.t());
                scores.axis_iter_mut(Axis(0)).for_each(|row| softmax(row, scale));
                let mut out = context.slice_axis_mut(Axis(0), Slice::from(rows.clone()));
                out.slice_axis_inplace(Axis(1), Slice::from(cols));
                general_mat_mul(1.0, &scores, &v, 0.0, &mut out);
            }
        }
        let mut attended = layer.attention_out.forward(&context)?;
        attended += &x;
        layer.attention_norm.apply(&mut attended);
        let mut inner = layer.intermediate.forward(&attended)?;
        cache_kernels::gelu_in_place(inner.as_slice_mut().ok_or("a new array is contiguous")?);
        let mut out = layer.output.forward(&inner)?;
        out += &attended;
        layer.output_norm.apply(&mut out);
        Ok(out)
    }
}

/// The rows and columns of `m` in the two ranges (ndarray's `s!` macro is not usable here: it expands
/// to code that allows `unsafe`, which this crate forbids).
fn block(m: &Array2<f32>, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) -> ArrayView2<'_, f32> {
    let mut view = m.slice_axis(Axis(0), Slice::from(rows));
    view.slice_axis_inplace(Axis(1), Slice::from(cols));
    view
}

/// `softmax(scale · row)`, in place.
fn softmax(mut row: ArrayViewMut1<'_, f32>, scale: f32) {
    let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * scale;
    row.mapv_inplace(|v| (v * scale - max).exp());
    let sum = row.sum();
    row.mapv_inplace(|v| v / sum);
}

/// The mean of the rows, scaled to unit length (left as is if it is all zeros, which a trained model
/// does not produce).
fn mean_normalized(rows: ArrayView2<'_, f32>) -> Vec<f32> {
    let mean = rows.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(rows.ncols()));
    let mut v = mean.to_vec();
    super::vector::normalize(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_a_distribution() {
        let mut row = Array1::from_vec(vec![1.0f32, 2.0, 3.0, 1000.0]);
        softmax(row.view_mut(), 0.5);
        assert!((row.sum() - 1.0).abs() < 1e-6);
        assert!(row[3] > 0.999 && row.iter().all(|p| p.is_finite()));
    }
}
