// The PyTorch zip container, laid out as torch.save (PyTorchStreamWriter over miniz) lays it
// out, written in one forward pass.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "offload/checkpoint_writer.hpp"
#include "offload/detail/writer_crc32.hpp"
#include "offload/detail/writer_internal.hpp"
#include "offload/detail/writer_output.hpp"

namespace ferry::offload::detail {

// Stored (uncompressed) entries under one top folder, each payload 64-byte aligned by an
// "FB" padding extra field, sizes and CRC in a data descriptor after the payload (so the
// local header can go out before the bytes are known), zip64 fields for any size or offset
// of 4 GiB or more, and always the zip64 end records, as torch writes them.
class TorchZipWriter {
 public:
  // top_folder is the archive's folder name, e.g. "pytorch_model" for pytorch_model.bin.
  // force_zip64 writes every entry as if it lay past 4 GiB (for tests).
  TorchZipWriter(OutputFile& out, std::string top_folder, bool force_zip64);

  // A whole entry from memory.
  void add(std::string_view name, std::string_view bytes);
  // An entry of exactly nbytes whose payload the caller then writes to the OutputFile,
  // feeding it to crc(), before calling end_entry().
  void begin_entry(std::string_view name, uint64_t nbytes);
  Crc32& crc() { return crc_; }
  void end_entry();
  // The central directory and the end records. The archive is complete after this.
  void finish();

 private:
  struct Entry {
    std::string name;
    uint64_t header_offset = 0;
    uint64_t nbytes = 0;
    uint32_t crc = 0;
    bool size64 = false;    // sizes in the zip64 extra field
    bool offset64 = false;  // header offset in the zip64 extra field
  };

  OutputFile& out_;
  std::string prefix_;  // "<top>/"
  bool force_zip64_;
  std::vector<Entry> entries_;
  Crc32 crc_;
  uint64_t data_offset_ = 0;  // first payload byte of the open entry
  bool open_ = false;
};

// One .bin file holding tensors as torch.save(state_dict) would.
void write_torch_zip_file(const std::filesystem::path& path,
                          std::span<const TensorSpec* const> tensors, const TensorFiller& fill,
                          ProgressReporter& progress, const WriterTuning& tuning);

}  // namespace ferry::offload::detail
