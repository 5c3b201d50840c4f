#include "offload/detail/torch_writer_zip.hpp"

#include <algorithm>
#include <utility>

#include "offload/detail/torch_writer_pickle.hpp"
#include "offload/detail/zip_format.hpp"
#include "runtime/core/error.hpp"

namespace ferry::offload::detail {
namespace {

using namespace zip_format;  // NOLINT(google-build-using-namespace): the record constants
constexpr uint64_t kMax32 = 0xFFFFFFFF;
constexpr uint64_t kMax16 = 0xFFFF;
// Bit 3: CRC and sizes follow the payload in a data descriptor; bit 11: names are UTF-8.
constexpr uint16_t kFlags = 0x0808;
// torch aligns every payload so that a loader can mmap tensors in place.
constexpr uint64_t kPayloadAlignment = 64;

// The zip64 extended-information extra field: only the fields whose 32-bit slot overflowed (or
// is forced), in the order the spec fixes: uncompressed size, compressed size, header offset.
std::string zip64_extra(bool size64, uint64_t nbytes, bool offset64, uint64_t header_offset) {
  std::string e;
  if (!size64 && !offset64) return e;
  append_le(e, kZip64ExtraId);
  append_le(e, static_cast<uint16_t>((size64 ? 16 : 0) + (offset64 ? 8 : 0)));
  if (size64) {
    append_le(e, nbytes);  // uncompressed
    append_le(e, nbytes);  // compressed: stored entries are not compressed
  }
  if (offset64) append_le(e, header_offset);
  return e;
}

uint32_t clamp32(bool wide, uint64_t v) { return wide ? 0xFFFFFFFFU : static_cast<uint32_t>(v); }

}  // namespace

TorchZipWriter::TorchZipWriter(OutputFile& out, std::string top_folder, bool force_zip64)
    : out_(out), prefix_(std::move(top_folder) + "/"), force_zip64_(force_zip64) {}

void TorchZipWriter::add(std::string_view name, std::string_view bytes) {
  begin_entry(name, bytes.size());
  const auto span = std::as_bytes(std::span(bytes));
  crc_.update(span);
  out_.write(span);
  end_entry();
}

void TorchZipWriter::begin_entry(std::string_view name, uint64_t nbytes) {
  FERRY_EXPECT(!open_, "zip entry {}{} begun inside another", prefix_, name);
  Entry e;
  e.name = prefix_ + std::string(name);
  e.header_offset = out_.offset();
  e.nbytes = nbytes;
  e.size64 = force_zip64_ || nbytes >= kMax32;
  e.offset64 = force_zip64_ || e.header_offset >= kMax32;
  FERRY_EXPECT(e.name.size() <= kMax16, "zip entry name {} is longer than 65535 bytes", e.name);

  const std::string zip64 = zip64_extra(e.size64, e.nbytes, e.offset64, e.header_offset);
  // As torch's getPadding: the payload of 'Z's of the "FB" field (id 0x4246) pads the header
  // so the entry's first byte lands on a 64-byte boundary; the field is there even when it
  // pads nothing.
  const uint64_t unpadded = e.header_offset + kLocalBytes + e.name.size() + zip64.size() + 4;
  const auto padding =
      static_cast<uint16_t>((kPayloadAlignment - unpadded % kPayloadAlignment) % kPayloadAlignment);
  std::string extra = zip64;
  extra += "FB";
  append_le(extra, padding);
  extra.append(padding, 'Z');

  std::string h;
  append_le(h, kLocalSig);
  append_le(h, uint16_t{0});  // version needed: miniz writes 0 for stored entries
  append_le(h, kFlags);
  append_le(h, uint16_t{0});  // method: stored
  append_le(h, uint16_t{0});  // time and date: 0, as torch, so output is reproducible
  append_le(h, uint16_t{0});
  append_le(h, uint32_t{0});  // CRC and sizes: in the data descriptor (flag bit 3)
  append_le(h, uint32_t{0});
  append_le(h, uint32_t{0});
  append_le(h, static_cast<uint16_t>(e.name.size()));
  append_le(h, static_cast<uint16_t>(extra.size()));
  h += e.name;
  h += extra;
  out_.write(h);

  data_offset_ = out_.offset();
  crc_ = Crc32();
  entries_.push_back(std::move(e));
  open_ = true;
}

void TorchZipWriter::end_entry() {
  FERRY_EXPECT(open_, "end_entry without begin_entry in {}", out_.final_path().string());
  Entry& e = entries_.back();
  const uint64_t written = out_.offset() - data_offset_;
  FERRY_EXPECT(written == e.nbytes, "zip entry {} in {} got {} bytes but declared {}", e.name,
               out_.final_path().string(), written, e.nbytes);
  e.crc = crc_.value();
  std::string d;
  append_le(d, kDataDescriptorSig);
  append_le(d, e.crc);
  // miniz writes 8-byte sizes exactly when the local header carried a zip64 field.
  if (e.size64 || e.offset64) {
    append_le(d, e.nbytes);
    append_le(d, e.nbytes);
  } else {
    append_le(d, static_cast<uint32_t>(e.nbytes));
    append_le(d, static_cast<uint32_t>(e.nbytes));
  }
  out_.write(d);
  open_ = false;
}

void TorchZipWriter::finish() {
  FERRY_EXPECT(!open_, "zip archive {} finished with an entry open", out_.final_path().string());
  const uint64_t cd_offset = out_.offset();
  for (const Entry& e : entries_) {
    const std::string zip64 = zip64_extra(e.size64, e.nbytes, e.offset64, e.header_offset);
    std::string h;
    append_le(h, kCentralSig);
    append_le(h, uint16_t{0});  // version made by
    append_le(h, uint16_t{0});  // version needed
    append_le(h, kFlags);
    append_le(h, uint16_t{0});  // method
    append_le(h, uint16_t{0});  // time
    append_le(h, uint16_t{0});  // date
    append_le(h, e.crc);
    append_le(h, clamp32(e.size64, e.nbytes));  // compressed
    append_le(h, clamp32(e.size64, e.nbytes));  // uncompressed
    append_le(h, static_cast<uint16_t>(e.name.size()));
    append_le(h, static_cast<uint16_t>(zip64.size()));
    append_le(h, uint16_t{0});  // comment length
    append_le(h, uint16_t{0});  // disk number
    append_le(h, uint16_t{0});  // internal attributes
    append_le(h, uint32_t{0});  // external attributes
    append_le(h, clamp32(e.offset64, e.header_offset));
    h += e.name;
    h += zip64;
    out_.write(h);
  }
  const uint64_t cd_bytes = out_.offset() - cd_offset;
  const uint64_t zip64_end_offset = out_.offset();
  const uint64_t count = entries_.size();

  std::string t;
  append_le(t, kZip64EocdSig);
  append_le(t, uint64_t{44});      // size of the rest of this record
  append_le(t, uint16_t{0x031E});  // version made by, as miniz
  append_le(t, uint16_t{45});      // version needed: 4.5, zip64
  append_le(t, uint32_t{0});       // this disk
  append_le(t, uint32_t{0});       // disk holding the central directory
  append_le(t, count);
  append_le(t, count);
  append_le(t, cd_bytes);
  append_le(t, cd_offset);

  append_le(t, kZip64LocatorSig);
  append_le(t, uint32_t{0});
  append_le(t, zip64_end_offset);
  append_le(t, uint32_t{1});  // total disks

  const bool wide = force_zip64_;
  append_le(t, kEocdSig);
  append_le(t, uint16_t{0});
  append_le(t, uint16_t{0});
  const auto count16 = static_cast<uint16_t>(wide ? kMax16 : std::min(count, kMax16));
  append_le(t, count16);
  append_le(t, count16);
  append_le(t, clamp32(wide || cd_bytes >= kMax32, cd_bytes));
  append_le(t, clamp32(wide || cd_offset >= kMax32, cd_offset));
  append_le(t, uint16_t{0});  // comment length
  out_.write(t);
}

void write_torch_zip_file(const std::filesystem::path& path,
                          std::span<const TensorSpec* const> tensors, const TensorFiller& fill,
                          ProgressReporter& progress, const WriterTuning& tuning) {
  OutputFile out(path, tuning.buffer_bytes());
  // torch names the top folder after the file, extension dropped.
  TorchZipWriter zip(out, path.stem().string(), tuning.force_zip64);
  zip.add("data.pkl", torch_state_dict_pickle(tensors));
  zip.add("byteorder", "little");
  // Entries go out in tensor order (data/0, data/1, ..., data/10), so the file is laid out in
  // the order the caller gave and fill() is called in that order. torch itself sorts the keys
  // as strings (data/0, data/1, data/10, ..., data/2); loaders find entries by name, so
  // torch.load does not care.
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const TensorSpec& t = *tensors[i];
    zip.begin_entry("data/" + std::to_string(i), t.nbytes());
    stream_tensor(out, t, fill, tuning.chunk_bytes, &zip.crc());
    zip.end_entry();
    progress.tensor_written(t.nbytes());
  }
  zip.add("version", "3\n");
  zip.finish();
  out.commit();
}

}  // namespace ferry::offload::detail
