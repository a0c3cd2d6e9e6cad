#include "data/llama.h"

#include <cmath>
#include <cstdlib>

#include "core/error.h"

namespace kvq::data {

namespace {
Matrix load(const GgufFile& g, const std::string& name, long rows, long cols) {
  const auto& t = g.tensor(name);
  if (t.dims.size() != 2 || static_cast<long>(t.dims[0]) != cols || static_cast<long>(t.dims[1]) != rows) {
    fail("{}: tensor '{}' has shape [{}], expected [{}, {}]", g.path(), name,
         t.dims.size() == 2 ? std::to_string(t.dims[0]) + ", " + std::to_string(t.dims[1]) : "rank " + std::to_string(t.dims.size()),
         cols, rows);
  }
  const std::vector<float> v = g.dequantize(t);
  return Eigen::Map<const Matrix>(v.data(), rows, cols);
}
Eigen::VectorXf load_vector(const GgufFile& g, const std::string& name, long n) {
  const auto& t = g.tensor(name);
  if (t.elements != static_cast<std::size_t>(n)) fail("{}: tensor '{}' has {} values, expected {}", g.path(), name, t.elements, n);
  const std::vector<float> v = g.dequantize(t);
  return Eigen::Map<const Eigen::VectorXf>(v.data(), n);
}
}  // namespace

std::string default_model_path() {
  const char* cache = std::getenv("KVQ_CACHE");
  const char* home = std::getenv("HOME");
  const std::string folder = cache ? cache : std::string(home ? home : ".") + "/.cache/kvq";
  return folder + "/SmolLM2-135M-Instruct.Q4_1.gguf";
}

LlamaModel::LlamaModel(const GgufFile& g) {
  const std::string arch = g.get_string("general.architecture");
  if (arch != "llama") fail("{}: architecture '{}', kvq runs 'llama'", g.path(), arch);
  auto count = [&](const std::string& key) {
    const double v = g.get_number(key);
    if (v < 1 || v > 1e7) fail("{}: metadata '{}' = {} is out of range", g.path(), key, v);
    return static_cast<int>(v);
  };
  config_.layers = count("llama.block_count");
  config_.hidden = count("llama.embedding_length");
  config_.ffn = count("llama.feed_forward_length");
  config_.heads = count("llama.attention.head_count");
  config_.kv_heads = g.has("llama.attention.head_count_kv") ? count("llama.attention.head_count_kv") : config_.heads;
  if (config_.hidden % config_.heads != 0 || config_.heads % config_.kv_heads != 0) {
    fail("{}: heads ({}) must divide the embedding ({}) and be a multiple of kv heads ({})", g.path(), config_.heads,
         config_.hidden, config_.kv_heads);
  }
  config_.head_dim = config_.hidden / config_.heads;
  if (config_.head_dim % 2 != 0) fail("{}: head_dim {} must be even for RoPE", g.path(), config_.head_dim);
  config_.rope_theta = g.has("llama.rope.freq_base") ? g.get_number("llama.rope.freq_base") : 10000.0;
  config_.norm_eps = g.has("llama.attention.layer_norm_rms_epsilon") ? g.get_number("llama.attention.layer_norm_rms_epsilon") : 1e-5;
  config_.vocab = static_cast<int>(g.tensor("token_embd.weight").dims.at(1));

  const int H = config_.hidden, KV = config_.kv_heads * config_.head_dim;
  embedding_ = load(g, "token_embd.weight", config_.vocab, H);
  if (g.has_tensor("output.weight")) output_ = load(g, "output.weight", config_.vocab, H);
  output_norm_ = load_vector(g, "output_norm.weight", H);
  layers_.resize(static_cast<std::size_t>(config_.layers));
#pragma omp parallel for schedule(dynamic)
  for (int l = 0; l < config_.layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    Layer& L = layers_[l];
    L.attn_norm = load_vector(g, p + "attn_norm.weight", H);
    L.ffn_norm = load_vector(g, p + "ffn_norm.weight", H);
    L.wq = load(g, p + "attn_q.weight", H, H);
    L.wk = load(g, p + "attn_k.weight", KV, H);
    L.wv = load(g, p + "attn_v.weight", KV, H);
    L.wo = load(g, p + "attn_output.weight", H, H);
    L.w_gate = load(g, p + "ffn_gate.weight", config_.ffn, H);
    L.w_up = load(g, p + "ffn_up.weight", config_.ffn, H);
    L.w_down = load(g, p + "ffn_down.weight", H, config_.ffn);
  }
  for (int i = 0; i < config_.head_dim / 2; ++i)
    inv_freq_.push_back(static_cast<float>(std::pow(config_.rope_theta, -2.0 * i / config_.head_dim)));
}

Matrix LlamaModel::rms_norm(const Matrix& x, const Eigen::VectorXf& weight) const {
  Matrix y(x.rows(), x.cols());
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    const float mean = x.row(r).squaredNorm() / static_cast<float>(x.cols());
    const float scale = 1.0f / std::sqrt(mean + static_cast<float>(config_.norm_eps));
    y.row(r) = (x.row(r) * scale).cwiseProduct(weight.transpose());
  }
  return y;
}

void LlamaModel::unpermute(Matrix& x, int heads) const {
  const int d = config_.head_dim;
  std::vector<float> tmp(static_cast<std::size_t>(d));
  for (Eigen::Index r = 0; r < x.rows(); ++r)
    for (int h = 0; h < heads; ++h) {
      float* v = x.row(r).data() + h * d;
      for (int i = 0; i < d / 2; ++i) {
        tmp[i] = v[2 * i];
        tmp[i + d / 2] = v[2 * i + 1];
      }
      std::copy(tmp.begin(), tmp.end(), v);
    }
}

void LlamaModel::rope(Matrix& x, int heads, int first_position) const {
  const int d = config_.head_dim, half = d / 2;
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    const float pos = static_cast<float>(first_position + r);
    for (int i = 0; i < half; ++i) {
      const float angle = pos * inv_freq_[i];
      const float c = std::cos(angle), s = std::sin(angle);
      for (int h = 0; h < heads; ++h) {
        float* v = x.row(r).data() + h * d;
        const float a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = a * s + b * c;
      }
    }
  }
}

void LlamaModel::attend(const float* q, const Matrix& k, const Matrix& v, int kv_head, int n, float* out) const {
  const int d = config_.head_dim;
  const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<float> p(static_cast<std::size_t>(n));
  float m = -INFINITY;
  for (int j = 0; j < n; ++j) {
    const float* kj = k.row(j).data() + kv_head * d;
    float acc = 0.0f;
    for (int c = 0; c < d; ++c) acc += q[c] * kj[c];
    p[j] = acc * inv_sqrt_d;
    m = std::max(m, p[j]);
  }
  float sum = 0.0f;
  for (float& x : p) sum += (x = std::exp(x - m));
  // Multiply by 1/sum, as cpu::softmax does: an unquantized cache reproduces this bit for bit.
  const float inv = 1.0f / sum;
  for (float& x : p) x *= inv;
  for (int c = 0; c < d; ++c) out[c] = 0.0f;
  for (int j = 0; j < n; ++j) {
    const float* vj = v.row(j).data() + kv_head * d;
    for (int c = 0; c < d; ++c) out[c] += p[j] * vj[c];
  }
}

void LlamaModel::causal_attention(const Matrix& q, const Matrix& k, const Matrix& v, Matrix& out) const {
  const int d = config_.head_dim, group = config_.heads / config_.kv_heads;
  const int T = static_cast<int>(q.rows());
  out.resize(T, q.cols());
#pragma omp parallel for schedule(dynamic) collapse(2)
  for (int h = 0; h < config_.heads; ++h)
    for (int t = 0; t < T; ++t) attend(q.row(t).data() + h * d, k, v, h / group, t + 1, out.row(t).data() + h * d);
}

void LlamaModel::block(int l, Matrix& x, int first_position, const BlockAttention& attend) const {
  const Layer& L = layers_[l];
  const Matrix h = rms_norm(x, L.attn_norm);
  Matrix q = h * L.wq.transpose();
  Matrix k = h * L.wk.transpose();
  const Matrix v = h * L.wv.transpose();
  unpermute(q, config_.heads);
  unpermute(k, config_.kv_heads);
  const Matrix k_pre = k;
  rope(q, config_.heads, first_position);
  rope(k, config_.kv_heads, first_position);
  Matrix attn(x.rows(), config_.hidden);
  attend(q, k_pre, k, v, attn);
  x.noalias() += attn * L.wo.transpose();
  const Matrix f = rms_norm(x, L.ffn_norm);
  Matrix gate = f * L.w_gate.transpose();
  const Matrix up = f * L.w_up.transpose();
  gate = gate.unaryExpr([](float g) { return g / (1.0f + std::exp(-g)); }).cwiseProduct(up);
  x.noalias() += gate * L.w_down.transpose();
}

Matrix LlamaModel::forward(const std::vector<int>& tokens, const Attention& attention, const Observer& observe) const {
  const Eigen::Index T = static_cast<Eigen::Index>(tokens.size());
  Matrix x(T, config_.hidden);
  for (Eigen::Index t = 0; t < T; ++t) {
    const int id = tokens[t];
    if (id < 0 || id >= config_.vocab) fail("token id {} is out of the vocabulary (size {})", id, config_.vocab);
    x.row(t) = embedding_.row(id);
  }
  for (int l = 0; l < config_.layers; ++l) {
    block(l, x, 0, [&](const Matrix& q, const Matrix& k_pre, const Matrix& k, const Matrix& v, Matrix& attn) {
      if (observe) observe(l, q, k_pre, k, v);
      attention(l, q, k, v, attn);
    });
  }
  return rms_norm(x, output_norm_);
}

Matrix LlamaModel::logits(const Matrix& hidden, int begin, int end) const {
  const Matrix& out = output_.size() ? output_ : embedding_;
  return hidden.middleRows(begin, end - begin) * out.transpose();
}

Eigen::VectorXf LlamaModel::decode(int token, KvCache& cache) const {
  if (token < 0 || token >= config_.vocab) fail("token id {} is out of the vocabulary (size {})", token, config_.vocab);
  if (cache.k.empty()) {
    cache.k.resize(static_cast<std::size_t>(config_.layers));
    cache.v.resize(static_cast<std::size_t>(config_.layers));
  }
  const int pos = cache.length;
  const int KV = config_.kv_heads * config_.head_dim;
  const int d = config_.head_dim, group = config_.heads / config_.kv_heads;
  Matrix x = embedding_.row(token);
  for (int l = 0; l < config_.layers; ++l) {
    block(l, x, pos, [&](const Matrix& q, const Matrix&, const Matrix& k, const Matrix& v, Matrix& attn) {
      Matrix& K = cache.k[l];
      Matrix& V = cache.v[l];
      K.conservativeResize(pos + 1, KV);
      V.conservativeResize(pos + 1, KV);
      K.row(pos) = k.row(0);
      V.row(pos) = v.row(0);
      for (int h = 0; h < config_.heads; ++h) attend(q.data() + h * d, K, V, h / group, pos + 1, attn.data() + h * d);
    });
  }
  ++cache.length;
  const Matrix& out = output_.size() ? output_ : embedding_;
  return (rms_norm(x, output_norm_) * out.transpose()).transpose();
}

}  // namespace kvq::data
