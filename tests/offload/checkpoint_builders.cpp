#include "tests/offload/checkpoint_builders.hpp"

#include <cstring>

namespace ferry::test {

namespace {

void put16(std::string& s, uint64_t v) {
  for (int i = 0; i < 2; ++i) s += static_cast<char>((v >> (8 * i)) & 0xff);
}
void put32(std::string& s, uint64_t v) {
  for (int i = 0; i < 4; ++i) s += static_cast<char>((v >> (8 * i)) & 0xff);
}
void put64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s += static_cast<char>((v >> (8 * i)) & 0xff);
}

}  // namespace

std::string make_safetensors(std::string_view header_json, std::string_view data) {
  std::string out;
  put64(out, header_json.size());
  out += header_json;
  out += data;
  return out;
}

std::string make_zip(const std::vector<ZipSpec>& entries, const ZipOptions& options) {
  std::string out;
  std::vector<uint64_t> offsets;
  for (const ZipSpec& e : entries) {
    offsets.push_back(out.size());
    const uint64_t header_end = out.size() + 30 + e.name.size();
    uint64_t pad = 0;
    if (options.align_data > 1) {
      // A padding extra field needs at least its 4-byte header.
      pad = (options.align_data - (header_end + 4) % options.align_data) % options.align_data;
    }
    const uint64_t extra_len = options.align_data > 1 ? 4 + pad : 0;
    put32(out, 0x04034b50);
    put16(out, 20);
    put16(out, 0x08);  // sizes in a data descriptor: the local header carries zeros
    put16(out, e.method);
    put16(out, 0);
    put16(out, 0);
    put32(out, 0);  // crc
    put32(out, 0);  // compressed size
    put32(out, 0);  // uncompressed size
    put16(out, e.name.size());
    put16(out, extra_len);
    out += e.name;
    if (extra_len) {
      put16(out, 0x4246);  // "FB", torch's padding field id
      put16(out, pad);
      out.append(pad, 'Z');
    }
    out += e.data;
  }
  const uint64_t cd_offset = out.size();
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const ZipSpec& e = entries[i];
    std::string extra;
    if (options.zip64) {
      put16(extra, 1);
      put16(extra, 8);
      put64(extra, offsets[i]);
    }
    put32(out, 0x02014b50);
    put16(out, 45);
    put16(out, 45);
    put16(out, 0x08);
    put16(out, e.method);
    put16(out, 0);
    put16(out, 0);
    put32(out, 0);
    put32(out, e.data.size());
    put32(out, e.data.size());
    put16(out, e.name.size());
    put16(out, extra.size());
    put16(out, 0);
    put16(out, 0);
    put16(out, 0);
    put32(out, 0);
    put32(out, options.zip64 ? 0xffffffffu : offsets[i]);
    out += e.name;
    out += extra;
  }
  const uint64_t cd_size = out.size() - cd_offset;
  if (options.zip64) {
    const uint64_t z_offset = out.size();
    put32(out, 0x06064b50);
    put64(out, 44);
    put16(out, 45);
    put16(out, 45);
    put32(out, 0);
    put32(out, 0);
    put64(out, entries.size());
    put64(out, entries.size());
    put64(out, cd_size);
    put64(out, cd_offset);
    put32(out, 0x07064b50);
    put32(out, 0);
    put64(out, z_offset);
    put32(out, 1);
  }
  put32(out, 0x06054b50);
  put16(out, 0);
  put16(out, 0);
  put16(out, options.zip64 ? 0xffff : entries.size());
  put16(out, options.zip64 ? 0xffff : entries.size());
  put32(out, options.zip64 ? 0xffffffffu : cd_size);
  put32(out, options.zip64 ? 0xffffffffu : cd_offset);
  put16(out, options.comment.size());
  out += options.comment;
  return out;
}

PickleWriter& PickleWriter::raw(std::string_view bytes) {
  out_ += bytes;
  return *this;
}

PickleWriter& PickleWriter::op(char opcode) {
  out_ += opcode;
  return *this;
}

PickleWriter& PickleWriter::proto(uint8_t version) {
  out_ += '\x80';
  out_ += static_cast<char>(version);
  return *this;
}

PickleWriter& PickleWriter::global(std::string_view module, std::string_view name) {
  out_ += 'c';
  out_ += module;
  out_ += '\n';
  out_ += name;
  out_ += '\n';
  return *this;
}

PickleWriter& PickleWriter::str(std::string_view s) {
  out_ += 'X';
  put32(out_, s.size());
  out_ += s;
  return *this;
}

PickleWriter& PickleWriter::integer(int64_t v) {
  if (v >= 0 && v < 256) {
    out_ += 'K';
    out_ += static_cast<char>(v);
  } else if (v >= 0 && v < 65536) {
    out_ += 'M';
    put16(out_, static_cast<uint64_t>(v));
  } else if (v >= INT32_MIN && v <= INT32_MAX) {
    out_ += 'J';
    put32(out_, static_cast<uint32_t>(static_cast<int32_t>(v)));
  } else {
    out_ += '\x8a';
    out_ += '\x08';
    put64(out_, static_cast<uint64_t>(v));
  }
  return *this;
}

PickleWriter& PickleWriter::ints_tuple(const std::vector<int64_t>& v) {
  mark();
  for (const int64_t x : v) integer(x);
  return tuple();
}

std::string make_state_dict_pickle(const std::vector<PickleTensorSpec>& tensors) {
  PickleWriter w;
  w.proto(2).global("collections", "OrderedDict").op(')').op('R').mark();
  for (const PickleTensorSpec& t : tensors) {
    std::vector<int64_t> stride = t.stride;
    if (stride.empty() && !t.size.empty()) {
      stride.assign(t.size.size(), 1);
      for (std::size_t k = t.size.size() - 1; k-- > 0;) stride[k] = stride[k + 1] * t.size[k + 1];
    }
    w.str(t.name).global("torch._utils", "_rebuild_tensor_v2").mark();
    w.mark().str("storage").global("torch", t.storage_type).str(t.key).str("cpu");
    w.integer(t.storage_numel).tuple().op('Q');
    w.integer(t.storage_offset).ints_tuple(t.size).ints_tuple(stride).op('\x89');
    w.global("collections", "OrderedDict").op(')').op('R').tuple().op('R');
  }
  w.op('u').stop();
  return w.bytes();
}

std::string make_torch_zip(std::string_view prefix, std::string_view pickle,
                           const std::vector<StorageSpec>& storages, const ZipOptions& options) {
  std::vector<ZipSpec> entries;
  entries.push_back({std::string(prefix) + "/data.pkl", std::string(pickle), 0});
  for (const StorageSpec& s : storages) {
    entries.push_back({std::string(prefix) + "/data/" + s.key, s.bytes, 0});
  }
  entries.push_back({std::string(prefix) + "/version", "3\n", 0});
  return make_zip(entries, options);
}

std::string f32_bytes(const std::vector<float>& v) {
  std::string s(v.size() * sizeof(float), '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

}  // namespace ferry::test
