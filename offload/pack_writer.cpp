#include "offload/pack_writer.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cstring>
#include <unordered_set>

#include "offload/detail/pack_format.hpp"
#include "offload/detail/xxhash64.hpp"
#include "offload/file.hpp"
#include "runtime/core/aligned_buffer.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/file_output.hpp"
#include "runtime/core/quant.hpp"

namespace ferry::offload {

namespace fs = std::filesystem;
using detail::align_up;

uint64_t PackTensorSpec::nbytes() const {
  if (is_row_packed(dtype)) return packed_matrix_bytes(dtype, shape[0], shape[1]);
  return static_cast<uint64_t>(shape.numel()) * dtype_size(dtype);
}

namespace {

void put_u32(unsigned char* p, uint32_t v) { std::memcpy(p, &v, 4); }
void put_u64(unsigned char* p, uint64_t v) { std::memcpy(p, &v, 8); }

void pwrite_full(int fd, const void* src, std::size_t nbytes, uint64_t offset,
                 const fs::path& path) {
  const auto* p = static_cast<const unsigned char*>(src);
  while (nbytes > 0) {
    const ssize_t n = ::pwrite(fd, p, nbytes, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    FERRY_SYSCALL(n, "cannot write {}", path.string());
    p += n;
    offset += static_cast<uint64_t>(n);
    nbytes -= static_cast<std::size_t>(n);
  }
}

void validate(const std::vector<PackBlobSpec>& blobs) {
  std::unordered_set<std::string> names;
  for (const auto& b : blobs) {
    for (const auto& t : b.tensors) {
      FERRY_EXPECT(!t.name.empty() && names.insert(t.name).second,
                   "tensor '{}' of blob '{}' is unnamed or given twice; names must be unique",
                   t.name, b.name);
      FERRY_EXPECT(is_float_weight(t.dtype) || (is_row_packed(t.dtype) && t.shape.rank == 2 &&
                                                 (!is_ggml_block(t.dtype) ||
                                                  ggml_row_fits(t.dtype, t.shape[1]))),
                   "tensor '{}' has dtype {} and shape {}; a pack holds f32/f16/bf16 tensors "
                   "and packed [rows, cols] matrices",
                   t.name, dtype_name(t.dtype), t.shape.str());
      for (int d = 0; d < t.shape.rank; ++d)
        FERRY_EXPECT(t.shape[d] > 0, "tensor '{}' has an empty dimension in {}", t.name,
                     t.shape.str());
    }
  }
}

// Removes the unfinished file unless the write completed.
struct PartialFile {
  fs::path path;
  bool keep = false;
  ~PartialFile() {
    if (!keep) {
      std::error_code ec;
      fs::remove(path, ec);
    }
  }
};

}  // namespace

uint64_t write_pack(const fs::path& file, const std::vector<PackBlobSpec>& blobs,
                    const PackFiller& fill, const PackWriteOptions& options) {
  validate(blobs);
  // Layout first: blob offsets depend only on sizes.
  std::vector<uint64_t> blob_bytes;
  std::vector<std::vector<uint64_t>> tensor_offsets;
  uint64_t total_blob_bytes = 0;
  uint64_t largest = 0;
  for (const auto& b : blobs) {
    uint64_t at = 0;
    auto& offs = tensor_offsets.emplace_back();
    for (const auto& t : b.tensors) {
      at = align_up(at, detail::kPackTensorAlignment);
      offs.push_back(at);
      at += t.nbytes();
    }
    blob_bytes.push_back(at);
    total_blob_bytes += at;
    largest = std::max(largest, align_up(at, detail::kPackAlignment));
  }

  // A private name (not a fixed "<file>.partial" two writers would share), removed on errors
  // and on SIGINT/SIGTERM.
  PartialFile partial;
  const UniqueFd fd(create_temp_file_beside(file, partial.path));
  const RemoveOnSignal remove_on_signal(partial.path);
  AlignedBuffer buffer(std::max<uint64_t>(largest, detail::kPackAlignment), detail::kPackAlignment);
  auto* buf = buffer.as<std::byte>();

  // The preamble's block stays zero until the end, when the header's place is known.
  std::memset(buf, 0, detail::kPackAlignment);
  pwrite_full(fd.get(), buf, detail::kPackAlignment, 0, partial.path);
  uint64_t offset = detail::kPackAlignment;
  uint64_t done = 0;
  nlohmann::json blob_list = nlohmann::json::array();
  nlohmann::json tensor_list = nlohmann::json::array();
  for (std::size_t b = 0; b < blobs.size(); ++b) {
    const uint64_t padded = align_up(blob_bytes[b], detail::kPackAlignment);
    std::memset(buf, 0, padded);  // alignment gaps and the tail are zeros: deterministic bytes
    for (std::size_t t = 0; t < blobs[b].tensors.size(); ++t) {
      const PackTensorSpec& spec = blobs[b].tensors[t];
      fill(b, t, {buf + tensor_offsets[b][t], spec.nbytes()});
      tensor_list.push_back(
          {{"name", spec.name},
           {"dtype", dtype_name(spec.dtype)},
           {"shape", std::vector<int64_t>(spec.shape.dims.begin(),
                                          spec.shape.dims.begin() + spec.shape.rank)},
           {"blob", b},
           {"offset", tensor_offsets[b][t]},
           {"nbytes", spec.nbytes()}});
    }
    nlohmann::json sums = nlohmann::json::array();
    for (uint64_t c = 0; c < blob_bytes[b]; c += detail::kPackChecksumChunk) {
      const uint64_t n = std::min(detail::kPackChecksumChunk, blob_bytes[b] - c);
      sums.push_back(fmt::format("{:016x}", detail::xxh64(buf + c, n)));
    }
    blob_list.push_back({{"name", blobs[b].name},
                         {"offset", offset},
                         {"nbytes", blob_bytes[b]},
                         {"xxh64", std::move(sums)}});
    pwrite_full(fd.get(), buf, padded, offset, partial.path);
    offset += padded;
    done += blob_bytes[b];
    if (options.progress) options.progress(done, total_blob_bytes);
  }

  const nlohmann::json header = {
      {"format", "ferry-pack"},
      {"version", detail::kPackVersion},
      {"alignment", detail::kPackAlignment},
      {"checksum", {{"algorithm", "xxh64"}, {"chunk_bytes", detail::kPackChecksumChunk}}},
      {"metadata", options.metadata},
      {"blobs", std::move(blob_list)},
      {"tensors", std::move(tensor_list)}};
  const std::string text = header.dump(1) + "\n";
  pwrite_full(fd.get(), text.data(), text.size(), offset, partial.path);

  unsigned char pre[detail::kPackPreambleBytes] = {};
  std::memcpy(pre, detail::kPackMagic, 8);
  put_u32(pre + 8, detail::kPackVersion);
  put_u32(pre + 12, 0);
  put_u64(pre + 16, offset);
  put_u64(pre + 24, text.size());
  put_u64(pre + 32, detail::xxh64(text.data(), text.size()));
  put_u64(pre + 40, offset + text.size());
  put_u64(pre + 48, detail::xxh64(pre, 48));
  pwrite_full(fd.get(), pre, sizeof pre, 0, partial.path);
  FERRY_SYSCALL(::fsync(fd.get()), "cannot sync {}", partial.path.string());
  std::error_code ec;
  fs::rename(partial.path, file, ec);
  if (ec)
    throw IoError(ec.value(),
                  fmt::format("cannot rename {} to {}", partial.path.string(), file.string()));
  partial.keep = true;
  return offset + text.size();
}

}  // namespace ferry::offload
