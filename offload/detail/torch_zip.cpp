#include "offload/detail/torch_zip.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <unordered_map>
#include <utility>

#include "offload/detail/pickle.hpp"
#include "offload/detail/zip.hpp"
#include "runtime/core/error.hpp"

namespace ferry::offload::detail {

namespace {

constexpr const char* kRedownload =
    "the PyTorch checkpoint is truncated or corrupt — download it again";

// torch names the top folder after the file it saved to ("pytorch_model/", "archive/", …),
// and renaming the file later does not rename it, so it is found, not assumed.
std::string find_prefix(const ZipDirectory& dir, std::string_view source) {
  std::string prefix;
  int found = 0;
  for (const ZipEntry& e : dir.entries()) {
    const std::string_view n = e.name;
    if (!n.ends_with("/data.pkl")) continue;
    const std::string_view p = n.substr(0, n.size() - 9);
    if (p.empty() || p.find('/') != std::string_view::npos) continue;
    if (found++ == 0) prefix = p;
  }
  FERRY_FORMAT_EXPECT(found != 0,
                      "{}: zip archive has no '<folder>/data.pkl' entry, so it is not a PyTorch "
                      "checkpoint written by torch.save (≥ 1.6); re-save it or convert it to "
                      "safetensors",
                      source);
  FERRY_FORMAT_EXPECT(found == 1,
                      "{}: zip archive holds {} '<folder>/data.pkl' entries; a PyTorch "
                      "checkpoint has exactly one — {}",
                      source, found, kRedownload);
  return prefix;
}

}  // namespace

FileTensors read_torch_zip(uint64_t file_size, const ReadAt& read_at, std::string_view source) {
  const ZipDirectory dir = ZipDirectory::read(file_size, read_at, std::string(source));
  const std::string prefix = find_prefix(dir, source);

  // torch ≥ 2.1 records the byte order; ferry (like every platform torch ships for) is
  // little-endian, so a big-endian checkpoint would load as garbage.
  if (const ZipEntry* bo = dir.find(prefix + "/byteorder")) {
    const std::string order = dir.read_entry(*bo, read_at, 16);
    FERRY_FORMAT_EXPECT(order == "little",
                        "{}: checkpoint was saved on a '{}'-endian machine; ferry reads only "
                        "little-endian checkpoints — re-save it on a little-endian machine",
                        source, order);
  }

  const ZipEntry* pkl = dir.find(prefix + "/data.pkl");
  const std::string pickle = dir.read_entry(*pkl, read_at, kMaxPickleBytes);
  const std::string pickle_source = fmt::format("{}: {}", source, pkl->name);
  const std::vector<PickledTensor> pickled = parse_torch_pickle(pickle, pickle_source);

  FileTensors out;
  std::unordered_map<std::string, uint64_t> storage_data;  // storage key → data offset
  for (const PickledTensor& t : pickled) {
    if (is_skipped_tensor(t.name, t.dtype.value_or(DType::u8))) {
      out.skipped.push_back(t.name);
      continue;
    }
    const TorchTensorLayout layout = torch_tensor_layout(t, source);
    const std::string entry_name = fmt::format("{}/data/{}", prefix, t.storage_key);
    const ZipEntry* entry = dir.find(entry_name);
    FERRY_FORMAT_EXPECT(entry != nullptr,
                        "{}: tensor '{}' refers to storage '{}' but the archive has no entry "
                        "'{}'; {}",
                        source, t.name, t.storage_key, entry_name, kRedownload);
    FERRY_FORMAT_EXPECT(layout.storage_nbytes <= entry->uncompressed_size,
                        "{}: tensor '{}' storage '{}' of {} elements ({}) needs {} bytes but its "
                        "entry holds {}; {}",
                        source, t.name, t.storage_key, t.storage_numel, t.storage_type,
                        layout.storage_nbytes, entry->uncompressed_size, kRedownload);
    auto it = storage_data.find(t.storage_key);
    if (it == storage_data.end()) {
      it = storage_data.emplace(t.storage_key, dir.data_offset(*entry, read_at)).first;
    }
    LocatedTensor lt;
    lt.name = t.name;
    lt.dtype = layout.dtype;
    lt.shape = layout.shape;
    lt.offset_bytes = it->second + layout.offset_bytes;  // within the entry, so within the file
    lt.nbytes = layout.nbytes;
    out.tensors.push_back(std::move(lt));
  }
  std::stable_sort(out.tensors.begin(), out.tensors.end(),
                   [](const LocatedTensor& a, const LocatedTensor& b) {
                     return a.offset_bytes < b.offset_bytes;
                   });
  return out;
}

}  // namespace ferry::offload::detail
