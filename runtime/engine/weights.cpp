#include "runtime/engine/weights.hpp"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string_view>
#include <unordered_set>

#include "kernels/cpu/ops.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/quant.hpp"
#include "runtime/core/thread_pool.hpp"
#include "runtime/core/units.hpp"

namespace ferry::engine {

using model::WeightRole;

namespace {

std::string checkpoint_where(const offload::Checkpoint& ck, const offload::TensorEntry& t) {
  return ck.files()[t.file_index].path.string();
}

}  // namespace

namespace {

// Tensors a checkpoint may carry that no model computes with: buffers older transformers saved
// (GPT-J's causal mask, Llama's rotary frequencies), a tied model's copy of its embedding, and
// GGUF's rope factors (read as metadata).
bool ignorable_tensor(const model::ModelConfig& config, const std::string& name) {
  auto ends_with = [&](std::string_view s) {
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  return ends_with(".attn.bias") || ends_with(".attn.masked_bias") || ends_with(".inv_freq") ||
         name == "rope_freqs.weight" ||
         (config.tie_word_embeddings && (name == "lm_head.weight" || name == "output.weight"));
}

// The block index in a tensor name ("transformer.h.3.", "model.layers.3.", "blk.3."), or -1.
int64_t layer_of(const std::string& name) {
  for (std::string_view prefix : {".h.", "layers.", "blk."}) {
    const auto at = name.find(prefix);
    if (at == std::string::npos) continue;
    int64_t n = -1;
    for (std::size_t i = at + prefix.size(); i < name.size() && name[i] >= '0' && name[i] <= '9';
         ++i)
      n = (n < 0 ? 0 : n * 10) + (name[i] - '0');
    if (n >= 0) return n;
  }
  return -1;
}

// A ferry pack carries the config it was converted with; config.json beside it must agree
// (an edited one once silently overrode the header: a pack ran as another model).
void check_pack_config(const model::ModelConfig& config, const offload::Checkpoint& checkpoint) {
  const nlohmann::json* meta = checkpoint.pack_metadata();
  if (!meta || !meta->contains("model") || !(*meta)["model"].is_object()) return;
  const nlohmann::json& header = (*meta)["model"];
  const nlohmann::json mine = config.to_json();
  for (const auto& [key, value] : header.items()) {
    if (!mine.contains(key) || mine[key] == value) continue;
    FERRY_FORMAT_EXPECT(false,
                        "{}: config.json says \"{}\": {} but the pack's header says {}; the "
                        "pack was converted from another config — restore config.json from the "
                        "pack's source model, or convert it again with `ferry convert`",
                        checkpoint.files().front().path.string(), key, mine[key].dump(),
                        value.dump());
  }
}

}  // namespace

void check_checkpoint(const model::ModelConfig& config, const offload::Checkpoint& checkpoint) {
  check_pack_config(config, checkpoint);
  // What describes the model: config.json, or a GGUF file's metadata.
  const char* described_by =
      config.naming == model::TensorNaming::gguf ? "the file's metadata" : "config.json";
  std::unordered_set<std::string> used;
  for (const auto& group : model::all_groups(config))
    for (const auto& w : group.weights) used.insert(w.name);
  for (const auto& group : model::all_groups(config)) {
    for (const auto& w : group.weights) {
      const offload::TensorEntry* t = checkpoint.find(w.name);
      FERRY_FORMAT_EXPECT(t != nullptr,
                          "tensor '{}' is missing from the checkpoint ({}, {} tensors); {} "
                          "describes a {} — is this the checkpoint that goes with it?",
                          w.name, checkpoint.files().front().path.parent_path().string(),
                          checkpoint.tensors().size(), described_by, config.summary());
      FERRY_FORMAT_EXPECT(t->shape == w.shape,
                          "{}: tensor '{}' has shape {} but {} ({}) needs {}; the description "
                          "and the weights do not match",
                          checkpoint_where(checkpoint, *t), w.name, t->shape.str(), described_by,
                          config.summary(), w.shape.str());
      // Matrices may be packed (a ferry pack's q8 / q4, a GGUF file's blocks); norms and biases
      // are always floats.
      FERRY_FORMAT_EXPECT(is_float_weight(t->dtype) || (w.is_matrix() && is_row_packed(t->dtype)),
                          "{}: tensor '{}' has dtype {}; ferry reads f32, f16 and bf16 weights "
                          "(and packed matrices: ferry packs' q8 / q4, GGUF's Q8_0 … Q6_K)",
                          checkpoint_where(checkpoint, *t), w.name, dtype_name(t->dtype));
    }
  }
  // A tensor the model does not use means config.json does not describe these weights (a
  // config with n_layer 1 over 2 layers once ran one layer silently).
  for (const auto& t : checkpoint.tensors()) {
    if (used.count(t.name) || ignorable_tensor(config, t.name)) continue;
    const int64_t layer = layer_of(t.name);
    FERRY_FORMAT_EXPECT(
        false, "{}: tensor '{}' is in the checkpoint but {} uses no such tensor{}; {} "
        "does not describe these weights — fix it or use the checkpoint it came with",
        checkpoint_where(checkpoint, t), t.name, config.summary(),
        layer >= config.n_layer
            ? fmt::format(" (the checkpoint has a layer {} but {} says {} layer{})", layer,
                          described_by, config.n_layer, config.n_layer == 1 ? "" : "s")
            : std::string(),
        described_by);
  }
}

Placement Placement::all(const model::ModelConfig& config, offload::Tier tier,
                         std::size_t slot_count) {
  Placement p;
  p.blocks.assign(static_cast<std::size_t>(config.n_layer), tier);
  p.head = tier;
  p.slot_count = slot_count;
  return p;
}

namespace {

model::ModelConfig checked(model::ModelConfig config, const offload::Checkpoint& checkpoint) {
  check_checkpoint(config, checkpoint);
  return config;
}

offload::StreamerOptions streamer_options(const Placement& placement, offload::IoOptions io) {
  offload::StreamerOptions o;
  o.slot_count = placement.slot_count;
  o.io = std::move(io);
  o.verify_pool = &default_thread_pool();  // between layers, while the kernels wait anyway
  return o;
}

std::vector<std::string> matrix_names(const model::WeightGroup& g) {
  std::vector<std::string> names;
  for (const auto& w : g.matrices()) names.push_back(w.name);
  return names;
}

}  // namespace

std::vector<offload::StreamUnitSpec> model_units(const model::ModelConfig& config,
                                                 const Placement& placement) {
  FERRY_EXPECT(placement.blocks.size() == static_cast<std::size_t>(config.n_layer),
               "the placement names {} blocks but the model has {}", placement.blocks.size(),
               config.n_layer);
  std::vector<offload::StreamUnitSpec> units;
  for (int l = 0; l < config.n_layer; ++l) {
    units.push_back({fmt::format("layer {}", l), matrix_names(model::block_group(config, l)),
                     placement.blocks[static_cast<std::size_t>(l)]});
  }
  units.push_back({"lm_head", matrix_names(model::head_group(config)), placement.head});
  return units;
}

const void* WeightProvider::part(const ChunkedMatrix::Part&) {
  throw Error("internal: this weight provider hands out no chunked matrices");
}

namespace {

// A piece's read widens to 4 KiB alignment at each end and, in a checkpoint with checksums (a
// ferry pack's, per 256 KiB), to whole checksum chunks: pieces are cut this much short of the
// chunk so that the slot holds them.
uint64_t piece_slack_bytes(const offload::Checkpoint& ck) {
  return 2 * 4096 + (ck.has_checksums() ? 2 * (uint64_t{256} << 10) : 0);
}

// Cuts a group's matrices into pieces of at most `target` bytes, at row boundaries; small
// matrices share a piece, one bigger than a piece is split over several.
void add_pieces(const model::WeightGroup& g, const offload::Checkpoint& ck, uint64_t target,
                const std::string& name, offload::Tier tier, StreamLayout& out) {
  StreamLayout::Group& group = out.groups.back();
  group.first_unit = out.units.size();
  const auto matrices = g.matrices();
  group.chunked.resize(matrices.size());
  offload::StreamUnitSpec piece;
  uint64_t used = 0;
  const auto close = [&] {
    if (piece.tensors.empty()) return;
    piece.name = fmt::format("{} piece {}", name, out.units.size() - group.first_unit);
    piece.tier = tier;
    out.units.push_back(std::move(piece));
    piece = {};
    used = 0;
  };
  for (std::size_t m = 0; m < matrices.size(); ++m) {
    const offload::TensorEntry& t = ck.at(matrices[m].name);
    const int64_t rows = t.shape[0];
    const uint64_t row_bytes = t.nbytes / static_cast<uint64_t>(rows);
    FERRY_EXPECT(row_bytes <= target,
                 "one row of '{}' ({} bytes) is bigger than a streamed piece of {}; raise "
                 "--max-ram",
                 t.name, row_bytes, format_bytes(target));
    for (int64_t r = 0; r < rows;) {
      int64_t take = static_cast<int64_t>((target - used) / row_bytes);
      if (take == 0) {
        close();
        continue;
      }
      take = std::min(take, rows - r);
      group.chunked[m].parts.push_back({out.units.size(), piece.tensors.size(), r, take});
      piece.tensors.push_back(t.name);
      piece.slices.push_back(offload::row_range(t, r, r + take));
      used += static_cast<uint64_t>(take) * row_bytes;
      r += take;
    }
  }
  close();
  group.unit_count = out.units.size() - group.first_unit;
}

}  // namespace

StreamLayout stream_layout(const model::ModelConfig& config, const offload::Checkpoint& checkpoint,
                           const Placement& placement) {
  const std::vector<offload::StreamUnitSpec> whole = model_units(config, placement);
  const std::vector<uint64_t> bytes = placement.chunk_bytes > 0
                                          ? offload::LayerStreamer::unit_bytes(checkpoint, whole)
                                          : std::vector<uint64_t>(whole.size(), 0);
  const uint64_t slack = piece_slack_bytes(checkpoint);
  FERRY_EXPECT(placement.chunk_bytes == 0 || placement.chunk_bytes > 2 * slack,
               "streamed pieces of {} are too small; they must be larger than {}",
               format_bytes(placement.chunk_bytes), format_bytes(2 * slack));
  StreamLayout out;
  for (std::size_t i = 0; i < whole.size(); ++i) {
    out.groups.emplace_back();
    const bool pieced = whole[i].tier == offload::Tier::disk && placement.chunk_bytes > 0 &&
                        bytes[i] > placement.chunk_bytes;
    if (!pieced) {
      out.groups.back().first_unit = out.units.size();
      out.units.push_back(whole[i]);
      continue;
    }
    const bool head = i + 1 == whole.size();
    add_pieces(head ? model::head_group(config) : model::block_group(config, static_cast<int>(i)),
               checkpoint, placement.chunk_bytes - slack, whole[i].name, whole[i].tier, out);
  }
  return out;
}

StreamingWeights::StreamingWeights(model::ModelConfig config, const offload::Checkpoint& checkpoint,
                                   const Placement& placement, offload::IoOptions io)
    : config_(checked(std::move(config), checkpoint)),
      checkpoint_(checkpoint),
      layout_(stream_layout(config_, checkpoint, placement)),
      streamer_(checkpoint, layout_.units, streamer_options(placement, std::move(io))) {
  embed_ = &checkpoint.at(model::embedding_group(config_).weights[0].name);
  row_.resize(packed_row_bytes(embed_->dtype, config_.n_embd));

  std::vector<model::WeightGroup> groups;
  for (int l = 0; l < config_.n_layer; ++l) groups.push_back(model::block_group(config_, l));
  groups.push_back(model::head_group(config_));
  // Norms and biases: small, read once, widened to f32; their views are set once every vector
  // is in (vectors_ moves while it grows).
  std::vector<std::vector<std::size_t>> offsets(groups.size());
  std::vector<std::byte> narrow;
  for (std::size_t i = 0; i < groups.size(); ++i) {
    Group& g = groups_.emplace_back();
    for (const auto& w : groups[i].vectors()) {
      const offload::TensorEntry& t = checkpoint.at(w.name);
      offsets[i].push_back(vectors_.size());
      vectors_.resize(vectors_.size() + static_cast<std::size_t>(w.shape.numel()));
      narrow.resize(t.nbytes);
      checkpoint.read(t, narrow.data());
      kernels::cpu::convert_to_f32(narrow.data(), t.dtype, w.shape.numel(),
                                   vectors_.data() + offsets[i].back());
    }
    const std::vector<ChunkedMatrix>& chunked = layout_.groups[i].chunked;
    const auto matrices = groups[i].matrices();
    for (std::size_t j = 0; j < matrices.size(); ++j) {
      const auto& w = matrices[j];
      g.views.set(w.role, MatrixView{nullptr, checkpoint.at(w.name).dtype, w.shape.dims[0],
                                     w.shape.dims[1], chunked.empty() ? nullptr : &chunked[j]});
      g.matrix_roles.push_back(w.role);
    }
  }
  for (std::size_t i = 0; i < groups.size(); ++i) {
    const auto vectors = groups[i].vectors();
    for (std::size_t j = 0; j < vectors.size(); ++j)
      groups_[i].views.set(vectors[j].role, vectors_.data() + offsets[i][j]);
  }
}

void StreamingWeights::embed(std::span<const int32_t> ids, float* out) {
  const std::size_t n_embd = static_cast<std::size_t>(config_.n_embd);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    checkpoint_.read_range(*embed_, static_cast<uint64_t>(ids[i]) * row_.size(), row_.size(),
                           row_.data());
    kernels::cpu::convert_to_f32(row_.data(), embed_->dtype, config_.n_embd, out + i * n_embd);
  }
}

UnitWeights StreamingWeights::acquire(std::size_t index) {
  const Group& g = groups_[index];
  UnitWeights u = g.views;
  // A whole unit is acquired now; a pieced one a piece at a time, as the product asks (part()).
  if (layout_.groups[index].chunked.empty()) {
    const offload::UnitView view = streamer_.acquire(layout_.groups[index].first_unit);
    for (std::size_t i = 0; i < g.matrix_roles.size(); ++i)
      u.matrices[static_cast<std::size_t>(g.matrix_roles[i])].data = view.tensor(i);
  }
  return u;
}

void StreamingWeights::release(std::size_t index) {
  const StreamLayout::Group& g = layout_.groups[index];
  if (g.chunked.empty()) {
    streamer_.release(g.first_unit);
    return;
  }
  if (piece_) streamer_.release(*piece_);
  piece_.reset();
}

const void* StreamingWeights::part(const ChunkedMatrix::Part& p) {
  if (piece_ != p.unit) {
    FERRY_EXPECT(!piece_ || p.unit == *piece_ + 1,
                 "internal: streamed piece {} asked for after piece {}; pieces are read in order",
                 p.unit, *piece_);
    if (piece_) streamer_.release(*piece_);
    piece_.reset();
    piece_view_ = streamer_.acquire(p.unit);
    piece_ = p.unit;
  }
  return piece_view_.tensor(p.tensor);
}

UnitWeights StreamingWeights::acquire_block(int layer) {
  return acquire(static_cast<std::size_t>(layer));
}

void StreamingWeights::release_block(int layer) { release(static_cast<std::size_t>(layer)); }

UnitWeights StreamingWeights::acquire_head() {
  return acquire(static_cast<std::size_t>(config_.n_layer));
}

void StreamingWeights::release_head() { release(static_cast<std::size_t>(config_.n_layer)); }

}  // namespace ferry::engine
