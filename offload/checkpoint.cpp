#include "offload/checkpoint.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <nlohmann/json.hpp>
#include <system_error>
#include <utility>

#include "offload/detail/gguf.hpp"
#include "offload/detail/pack_format.hpp"
#include "offload/detail/pack_reader.hpp"
#include "offload/detail/safetensors_header.hpp"
#include "offload/detail/source.hpp"
#include "offload/detail/torch_zip.hpp"
#include "offload/file.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/json_parse.hpp"

namespace ferry::offload {

namespace fs = std::filesystem;

std::string_view format_name(CheckpointFormat f) {
  switch (f) {
    case CheckpointFormat::safetensors:
      return "safetensors";
    case CheckpointFormat::torch_zip:
      return "torch-zip";
    case CheckpointFormat::ferry_pack:
      return "ferry-pack";
    case CheckpointFormat::gguf:
      return "gguf";
  }
  return "?";
}

VerifyMode parse_verify_mode(std::string_view v, std::string_view source) {
  if (v == "always") return VerifyMode::always;
  if (v == "once") return VerifyMode::once;
  if (v == "off") return VerifyMode::off;
  throw InvalidArgument(fmt::format(
      "{} '{}' is not a verify mode; use always (check a ferry pack's checksums on every read), "
      "once (on the first read of each part) or off",
      source, v));
}

VerifyMode verify_mode_from_env() {
  const char* env = std::getenv("FERRY_VERIFY");
  if (env == nullptr || *env == '\0') return VerifyMode::always;
  return parse_verify_mode(env, "FERRY_VERIFY");
}

namespace {

// An index bigger than this is not a Hugging Face index (GPT-J-6B's is ~20 KiB).
constexpr uint64_t kMaxIndexBytes = 64ull << 20;

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

struct OpenedFile {
  fs::path path;
  UniqueFd fd;
  uint64_t size_bytes = 0;
  CheckpointFormat format = CheckpointFormat::safetensors;
};

OpenedFile open_file(const fs::path& path) {
  OpenedFile f;
  f.path = path;
  f.fd = open_read(path);
  f.size_bytes = file_size(f.fd.get(), path);
  // The content decides, not the name: a zip starts with a local header, a legacy (pre-1.6)
  // torch file with a pickled magic number, and anything else is tried as safetensors.
  unsigned char magic[8] = {};
  if (f.size_bytes >= 8) pread_full(f.fd.get(), magic, 8, 0, path, "the file's magic bytes");
  if (magic[0] == 'P' && magic[1] == 'K' && magic[2] == 3 && magic[3] == 4) {
    f.format = CheckpointFormat::torch_zip;
  } else if (detail::is_pack_magic(magic)) {
    f.format = CheckpointFormat::ferry_pack;
  } else if (f.size_bytes >= 4 && detail::is_gguf_magic(magic)) {
    f.format = CheckpointFormat::gguf;
  } else {
    FERRY_FORMAT_EXPECT(path.extension() != ".gguf",
                        "{} is not a GGUF file (it does not start with \"GGUF\"); the download "
                        "is incomplete or not a GGUF model — download it again",
                        path.string());
    FERRY_FORMAT_EXPECT(path.extension() != ".ferry",
                        "{} is not a ferry pack (it does not start with \"FERRYPAK\"); make "
                        "packs with ferry convert -m MODEL_DIR -o OUT.ferry",
                        path.string());
    // torch's legacy format opens with PROTO 2 and LONG1 of its 10-byte magic number. (As a
    // safetensors length prefix these bytes would claim a 177 MB header, over its limit.)
    FERRY_FORMAT_EXPECT(
        !(magic[0] == 0x80 && magic[1] == 0x02 && magic[2] == 0x8a && magic[3] == 0x0a),
        "{} is a legacy (pre-1.6) PyTorch checkpoint, which ferry does not read; "
        "re-save it with torch ≥ 1.6 (torch.save's default zip format) or "
        "convert it to safetensors",
        path.string());
  }
  return f;
}

detail::ReadAt file_read_at(const OpenedFile& f) {
  return [fd = f.fd.get(), path = f.path](uint64_t offset, std::size_t nbytes, void* dst,
                                          const char* what) {
    pread_full(fd, dst, nbytes, offset, path, what);
  };
}

detail::FileTensors parse_file(const OpenedFile& f) {
  const detail::ReadAt read_at = file_read_at(f);
  const std::string source = f.path.string();
  FERRY_FORMAT_EXPECT(f.format != CheckpointFormat::ferry_pack &&
                          f.format != CheckpointFormat::gguf,
                      "{} is a {}; open it on its own (or its directory), not as a shard of an "
                      "index",
                      source, f.format == CheckpointFormat::gguf ? "GGUF file" : "ferry pack");
  return f.format == CheckpointFormat::torch_zip
             ? detail::read_torch_zip(f.size_bytes, read_at, source)
             : detail::read_safetensors(f.size_bytes, read_at, source);
}

// A shard name from an index must be a plain file name beside the index: anything else could
// make a downloaded index read files elsewhere on the machine.
bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find_first_of("/\\") == std::string::npos && name.find('\0') == std::string::npos;
}

}  // namespace

struct Checkpoint::Impl {
  fs::path source;
  CheckpointFormat format = CheckpointFormat::safetensors;
  std::vector<CheckpointFile> files;
  std::vector<UniqueFd> fds;
  std::vector<TensorEntry> tensors;
  std::unordered_map<std::string, std::size_t, StringHash, std::equal_to<>> by_name;
  uint64_t total_bytes = 0;
  // A ferry pack (always a single file, index 0): its blobs and checksums.
  std::unique_ptr<detail::PackContents> pack;
  // A GGUF file (the first of a split set): its header.
  std::unique_ptr<detail::GgufHeader> gguf;
  VerifyMode verify = VerifyMode::always;
  mutable std::mutex verified_mutex;
  mutable std::vector<std::vector<char>> verified;  // VerifyMode::once: chunks already checked

  uint64_t verify_range(uint64_t offset_bytes, const void* data, uint64_t nbytes,
                        ThreadPool* pool = nullptr) const {
    if (!pack || verify == VerifyMode::off) return 0;
    if (verify == VerifyMode::always)
      return detail::verify_pack_range(*pack, offset_bytes, data, nbytes, files[0].path.string(),
                                       nullptr, pool);
    const std::lock_guard lock(verified_mutex);
    return detail::verify_pack_range(*pack, offset_bytes, data, nbytes, files[0].path.string(),
                                     &verified, pool);
  }

  // Appends one parsed file's tensors (already in offset order); a name seen in an earlier
  // file is an error, since which copy is meant would be a guess.
  void add_file(OpenedFile f, detail::FileTensors parsed) {
    const auto index = static_cast<uint32_t>(files.size());
    for (detail::LocatedTensor& t : parsed.tensors) {
      const auto [it, inserted] = by_name.emplace(t.name, tensors.size());
      if (!inserted) {
        // The earlier copy may be in this very file, which is not in `files` yet.
        const uint32_t first = tensors[it->second].file_index;
        FERRY_FORMAT_EXPECT(first != index,
                            "{}: tensor '{}' appears twice in {}; the file is damaged — "
                            "download or convert it again",
                            source.string(), t.name, f.path.string());
        FERRY_FORMAT_EXPECT(false,
                            "{}: tensor '{}' appears in both {} and {}; the checkpoint's shards "
                            "overlap — download them again",
                            source.string(), t.name, files[first].path.string(), f.path.string());
      }
      TensorEntry e;
      e.name = std::move(t.name);
      e.dtype = t.dtype;
      e.shape = t.shape;
      e.file_index = index;
      e.offset_bytes = t.offset_bytes;
      e.nbytes = t.nbytes;
      total_bytes += e.nbytes;
      tensors.push_back(std::move(e));
    }
    files.push_back(CheckpointFile{f.path, f.size_bytes});
    fds.push_back(std::move(f.fd));
  }
};

namespace {

// "name-00001-of-00003.gguf" → ("name", 1, 3), llama.cpp's split naming (llama_split_path).
struct SplitName {
  std::string prefix;
  int index = 0;
  int count = 0;
};
std::optional<SplitName> parse_split_name(const std::string& file) {
  // …-NNNNN-of-MMMMM.gguf: 1 + 5 + 4 + 5 + 5 characters after the prefix.
  constexpr std::size_t kTail = 20;
  if (file.size() <= kTail) return std::nullopt;
  const std::string tail = file.substr(file.size() - kTail);
  auto digits = [&](std::size_t at) {
    int v = 0;
    for (std::size_t i = at; i < at + 5; ++i) {
      if (tail[i] < '0' || tail[i] > '9') return -1;
      v = v * 10 + (tail[i] - '0');
    }
    return v;
  };
  if (tail[0] != '-' || tail.substr(6, 4) != "-of-" || tail.substr(15) != ".gguf")
    return std::nullopt;
  const int index = digits(1);
  const int count = digits(10);
  if (index < 1 || count < 1 || index > count) return std::nullopt;
  return SplitName{file.substr(0, file.size() - kTail), index, count};
}

int64_t metadata_int(const nlohmann::json& m, const char* key, int64_t fallback) {
  const auto it = m.find(key);
  return it != m.end() && it->is_number_integer() ? it->get<int64_t>() : fallback;
}

// A GGUF file, or the whole split set when it is one file of it (the metadata is the first
// file's; every file lists its own tensors).
void open_gguf(Checkpoint::Impl& impl, const fs::path& path, OpenedFile first) {
  auto parse = [](const OpenedFile& f) {
    return detail::read_gguf_header(f.size_bytes, file_read_at(f), f.path.string());
  };
  const std::optional<SplitName> split = parse_split_name(path.filename().string());
  detail::GgufHeader header = parse(first);
  const int64_t count = metadata_int(header.metadata, "split.count", 1);
  if (!split || count <= 1) {
    FERRY_FORMAT_EXPECT(count <= 1,
                        "{} is part of a split GGUF of {} files but its name does not say which "
                        "(llama.cpp names them NAME-00001-of-{:05}.gguf); restore the names",
                        path.string(), count, count);
    detail::FileTensors parsed = detail::gguf_file_tensors(header, path.string());
    impl.gguf = std::make_unique<detail::GgufHeader>(std::move(header));
    impl.add_file(std::move(first), std::move(parsed));
    return;
  }
  FERRY_FORMAT_EXPECT(count == split->count,
                      "{}: its name says {} files but its split.count says {}; the split set is "
                      "inconsistent — download it again",
                      path.string(), split->count, count);
  const fs::path dir = path.parent_path();
  std::unique_ptr<detail::GgufHeader> first_header;
  for (int i = 1; i <= split->count; ++i) {
    const fs::path p =
        dir / fmt::format("{}-{:05}-of-{:05}.gguf", split->prefix, i, split->count);
    std::error_code ec;
    FERRY_FORMAT_EXPECT(fs::is_regular_file(p, ec),
                        "{}: split file {} of {} is missing ({}); download every part of the "
                        "model into one directory",
                        path.string(), i, split->count, p.string());
    OpenedFile f = p == path ? std::move(first) : open_file(p);
    FERRY_FORMAT_EXPECT(f.format == CheckpointFormat::gguf, "{} is not a GGUF file",
                        p.string());
    detail::GgufHeader h = p == path ? std::move(header) : parse(f);
    FERRY_FORMAT_EXPECT(metadata_int(h.metadata, "split.no", -1) == i - 1,
                        "{}: its split.no is {} but its name says part {}; the split set is "
                        "inconsistent — download it again",
                        p.string(), metadata_int(h.metadata, "split.no", -1), i);
    detail::FileTensors parsed = detail::gguf_file_tensors(h, p.string());
    if (i == 1) first_header = std::make_unique<detail::GgufHeader>(std::move(h));
    impl.add_file(std::move(f), std::move(parsed));
  }
  const int64_t total = metadata_int(first_header->metadata, "split.tensors.count", -1);
  FERRY_FORMAT_EXPECT(total < 0 || static_cast<uint64_t>(total) == impl.tensors.size(),
                      "{}: split.tensors.count says {} tensors but the {} files hold {}; a part "
                      "is missing or from another model — download them again",
                      path.string(), total, split->count, impl.tensors.size());
  impl.gguf = std::move(first_header);
}

std::unique_ptr<Checkpoint::Impl> open_single(const fs::path& path) {
  auto impl = std::make_unique<Checkpoint::Impl>();
  impl->source = path;
  OpenedFile f = open_file(path);
  impl->format = f.format;
  if (f.format == CheckpointFormat::ferry_pack) {
    impl->pack = std::make_unique<detail::PackContents>(
        detail::read_pack(f.size_bytes, file_read_at(f), path.string()));
    for (const auto& b : impl->pack->blobs)
      impl->verified.emplace_back(b.checksums.size(), char{0});
    detail::FileTensors parsed = impl->pack->tensors;
    impl->add_file(std::move(f), std::move(parsed));
    return impl;
  }
  if (f.format == CheckpointFormat::gguf) {
    open_gguf(*impl, path, std::move(f));
    return impl;
  }
  detail::FileTensors parsed = parse_file(f);
  impl->add_file(std::move(f), std::move(parsed));
  return impl;
}

std::unique_ptr<Checkpoint::Impl> open_index(const fs::path& index_path) {
  const std::string src = index_path.string();
  const UniqueFd index_fd = open_read(index_path);
  const uint64_t index_size = file_size(index_fd.get(), index_path);
  FERRY_FORMAT_EXPECT(index_size <= kMaxIndexBytes,
                      "{}: index of {} bytes exceeds the {} byte limit; this is not a Hugging "
                      "Face checkpoint index",
                      src, index_size, kMaxIndexBytes);
  std::string text(index_size, '\0');
  pread_full(index_fd.get(), text.data(), text.size(), 0, index_path, "the index");

  const nlohmann::json index = parse_json_strict(text, src + ": index", "download it again");
  FERRY_FORMAT_EXPECT(
      index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
      "{}: index has no \"weight_map\" object; download it again", src);

  // shard file name → tensor names the index places in it; std::map keeps shards in name
  // order, which is Hugging Face's 00001-of-0000N order.
  std::map<std::string, std::vector<std::string>> shards;
  for (const auto& [tensor, shard] : index["weight_map"].items()) {
    FERRY_FORMAT_EXPECT(shard.is_string(),
                        "{}: weight_map entry for tensor '{}' is not a file name string; "
                        "download the index again",
                        src, tensor);
    const auto& name = shard.get_ref<const std::string&>();
    FERRY_FORMAT_EXPECT(is_plain_file_name(name),
                        "{}: weight_map places tensor '{}' in '{}', which is not a file name "
                        "beside the index; refusing to read outside the model directory",
                        src, tensor, name);
    shards[name].push_back(tensor);
  }
  FERRY_FORMAT_EXPECT(!shards.empty(), "{}: weight_map is empty; download the index again", src);

  const fs::path dir = index_path.parent_path();
  for (const auto& [shard, names] : shards) {
    std::error_code ec;
    FERRY_FORMAT_EXPECT(fs::is_regular_file(dir / shard, ec),
                        "{}: shard '{}' (which holds tensor '{}'{}) is missing from {}; download "
                        "it again",
                        src, shard, names.front(),
                        names.size() > 1 ? fmt::format(" and {} others", names.size() - 1) : "",
                        dir.string());
  }

  auto impl = std::make_unique<Checkpoint::Impl>();
  impl->source = index_path;
  bool first = true;
  for (const auto& [shard, names] : shards) {
    OpenedFile f = open_file(dir / shard);
    if (first) {
      impl->format = f.format;
      first = false;
    }
    FERRY_FORMAT_EXPECT(f.format == impl->format,
                        "{}: shard '{}' is {} but earlier shards are {}; the shards must share "
                        "one format",
                        src, shard, format_name(f.format), format_name(impl->format));
    detail::FileTensors parsed = parse_file(f);
    std::unordered_map<std::string_view, bool> present;
    for (const auto& t : parsed.tensors) present.emplace(t.name, true);
    for (const auto& s : parsed.skipped) present.emplace(s, true);
    for (const std::string& name : names) {
      FERRY_FORMAT_EXPECT(present.contains(name),
                          "{}: tensor '{}' is listed in shard '{}' but that shard does not hold "
                          "it; the index and the shards do not match — download them again",
                          src, name, shard);
    }
    impl->add_file(std::move(f), std::move(parsed));
  }
  return impl;
}

}  // namespace

Checkpoint Checkpoint::open(const fs::path& path, VerifyMode verify) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  FERRY_FORMAT_EXPECT(fs::exists(st),
                      "{}: no such file or directory; pass a model directory or "
                      "a checkpoint file",
                      path.string());
  if (fs::is_directory(st)) {
    constexpr const char* kCandidates[] = {"model.ferry", "model.safetensors",
                                           "model.safetensors.index.json", "pytorch_model.bin",
                                           "pytorch_model.bin.index.json"};
    for (const char* name : kCandidates) {
      const fs::path p = path / name;
      if (fs::is_regular_file(p, ec)) return open(p, verify);
    }
    // A directory of one GGUF model (or one split set): that file (its first part).
    std::vector<fs::path> ggufs;
    for (const auto& e : fs::directory_iterator(path, ec)) {
      const std::string n = e.path().filename().string();
      if (!n.ends_with(".gguf") || !e.is_regular_file(ec)) continue;
      const auto s = parse_split_name(n);
      if (!s || s->index == 1) ggufs.push_back(e.path());
    }
    if (ggufs.size() == 1) return open(ggufs.front(), verify);
    FERRY_FORMAT_EXPECT(ggufs.empty(),
                        "{} holds {} GGUF models ({}, {}, …); pass the one to run with -m FILE.gguf",
                        path.string(), ggufs.size(), ggufs[0].filename().string(),
                        ggufs[1].filename().string());
    FERRY_FORMAT_EXPECT(false,
                        "{}: no checkpoint found (looked for model.safetensors, "
                        "model.safetensors.index.json, pytorch_model.bin, "
                        "pytorch_model.bin.index.json and a .gguf file); download the model's "
                        "weights into it",
                        path.string());
  }
  const std::string name = path.filename().string();
  if (name.ends_with(".index.json")) return Checkpoint(open_index(path));
  auto impl = open_single(path);
  impl->verify = verify;
  return Checkpoint(std::move(impl));
}

Checkpoint::Checkpoint(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Checkpoint::Checkpoint(Checkpoint&&) noexcept = default;
Checkpoint& Checkpoint::operator=(Checkpoint&&) noexcept = default;
Checkpoint::~Checkpoint() = default;

CheckpointFormat Checkpoint::format() const { return impl_->format; }
const std::vector<CheckpointFile>& Checkpoint::files() const { return impl_->files; }
const std::vector<TensorEntry>& Checkpoint::tensors() const { return impl_->tensors; }
uint64_t Checkpoint::total_bytes() const { return impl_->total_bytes; }

const TensorEntry* Checkpoint::find(std::string_view name) const {
  const auto it = impl_->by_name.find(name);
  return it == impl_->by_name.end() ? nullptr : &impl_->tensors[it->second];
}

const TensorEntry& Checkpoint::at(std::string_view name) const {
  const TensorEntry* t = find(name);
  FERRY_FORMAT_EXPECT(t != nullptr,
                      "tensor '{}' is missing from {}; the checkpoint does not match the model's "
                      "config.json — check that the directory holds the right model",
                      name, impl_->source.string());
  return *t;
}

void Checkpoint::read(const TensorEntry& t, void* dst) const { read_range(t, 0, t.nbytes, dst); }

void Checkpoint::read_range(const TensorEntry& t, uint64_t offset_bytes, uint64_t nbytes,
                            void* dst) const {
  FERRY_EXPECT(t.file_index < impl_->files.size(),
               "tensor '{}' names file {} but the checkpoint has {} files", t.name, t.file_index,
               impl_->files.size());
  FERRY_EXPECT(offset_bytes <= t.nbytes && nbytes <= t.nbytes - offset_bytes,
               "read of bytes [{}, {}) of tensor '{}' is outside its {} bytes", offset_bytes,
               offset_bytes + nbytes, t.name, t.nbytes);
  const std::string what = fmt::format("tensor '{}'", t.name);
  const uint64_t begin = t.offset_bytes + offset_bytes;
  if (!impl_->pack || impl_->verify == VerifyMode::off || nbytes == 0) {
    pread_full(impl_->fds[t.file_index].get(), dst, nbytes, begin, impl_->files[t.file_index].path,
               what.c_str());
    return;
  }
  // Read the whole checksummed chunks around the bytes, check them, hand out the part asked for.
  const ByteRange checked = checked_range(t.file_index, begin, nbytes);
  std::vector<std::byte> chunks(checked.nbytes);
  pread_full(impl_->fds[t.file_index].get(), chunks.data(), chunks.size(), checked.offset_bytes,
             impl_->files[t.file_index].path, what.c_str());
  impl_->verify_range(checked.offset_bytes, chunks.data(), chunks.size());
  std::memcpy(dst, chunks.data() + (begin - checked.offset_bytes), nbytes);
}

uint64_t Checkpoint::checksum_chunk_bytes() const {
  return impl_->pack ? detail::kPackChecksumChunk : 0;
}

ByteRange Checkpoint::checked_range(uint32_t file_index, uint64_t offset_bytes,
                                    uint64_t nbytes) const {
  // A pack is one file: its blobs (and so its checksums) are all in file 0.
  if (!impl_->pack || impl_->verify == VerifyMode::off || file_index != 0 || nbytes == 0)
    return {offset_bytes, nbytes};
  uint64_t lo = offset_bytes;
  uint64_t hi = offset_bytes + nbytes;
  for (const auto& span : detail::pack_chunks_overlapping(*impl_->pack, offset_bytes, nbytes)) {
    const auto& blob = impl_->pack->blobs[span.blob];
    lo = std::min(lo, blob.offset_bytes + span.first * detail::kPackChecksumChunk);
    hi = std::max(hi, std::min(blob.offset_bytes + span.last * detail::kPackChecksumChunk,
                               blob.offset_bytes + blob.nbytes));
  }
  return {lo, hi - lo};
}

uint64_t Checkpoint::verify(uint32_t file_index, uint64_t offset_bytes, const void* data,
                            uint64_t nbytes, ThreadPool* pool) const {
  if (!impl_->pack || file_index != 0) return 0;
  return impl_->verify_range(offset_bytes, data, nbytes, pool);
}

bool Checkpoint::has_checksums() const { return impl_->pack != nullptr; }

uint64_t Checkpoint::verify_all(const std::function<void(uint64_t, uint64_t)>& progress,
                                ThreadPool* pool) const {
  FERRY_EXPECT(impl_->pack != nullptr,
               "{} is a {} checkpoint, which carries no checksums; only ferry packs can be "
               "verified (make one with ferry convert)",
               impl_->source.string(), format_name(impl_->format));
  const uint64_t file_bytes = impl_->files[0].size_bytes;
  constexpr uint64_t kReadBytes = 64ull << 20;
  std::vector<std::byte> buf(kReadBytes);
  uint64_t checked = 0;
  // Reads overlap by one checksum chunk, so every chunk lies wholly inside some read; each chunk
  // is checked once.
  std::vector<std::vector<char>> seen;
  for (const auto& b : impl_->pack->blobs) seen.emplace_back(b.checksums.size(), char{0});
  for (uint64_t at = 0; at < file_bytes;) {
    const uint64_t n = std::min(kReadBytes, file_bytes - at);
    pread_full(impl_->fds[0].get(), buf.data(), n, at, impl_->files[0].path, "the pack");
    checked += detail::verify_pack_range(*impl_->pack, at, buf.data(), n,
                                         impl_->files[0].path.string(), &seen, pool);
    if (progress) progress(at + n, file_bytes);
    if (at + n >= file_bytes) break;
    at += n - detail::kPackChecksumChunk;
  }
  return checked;
}
VerifyMode Checkpoint::verify_mode() const { return impl_->verify; }
const nlohmann::json* Checkpoint::pack_metadata() const {
  return impl_->pack ? &impl_->pack->metadata : nullptr;
}
const detail::GgufHeader* Checkpoint::gguf_header() const { return impl_->gguf.get(); }

int Checkpoint::fd(uint32_t file_index) const {
  FERRY_EXPECT(file_index < impl_->fds.size(),
               "file index {} is out of range (the checkpoint has "
               "{} files)",
               file_index, impl_->fds.size());
  return impl_->fds[file_index].get();
}

}  // namespace ferry::offload
