// ferry._ferry: the Python module's native half. A thin layer over the libraries the CLI uses —
// session::Session opens a model exactly as `ferry run` does, engine::generate and run_batch
// generate, the engine's forward pass gives logits — so nothing here is a second implementation.
// The pure-Python package (python/ferry/__init__.py) adds text in and out, streaming, progress
// bars and the transformers-style classes on top.
//
// Threads: the GIL is released while ferry computes and taken again only to call back into
// Python (a token callback, a progress callback, PyErr_CheckSignals between tokens). One model
// runs one computation at a time (its mutex, taken after the GIL is released, so a thread
// waiting for the model never holds the GIL).
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "runtime/backends/registry.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/process.hpp"
#include "runtime/core/units.hpp"
#include "runtime/engine/generate.hpp"
#include "runtime/engine/scheduler.hpp"
#include "runtime/engine/speculative.hpp"
#include "runtime/session/plan.hpp"
#include "runtime/session/session.hpp"
#include "runtime/text/tokenizer.hpp"

namespace py = pybind11;

namespace ferry::python {

namespace {

// The exception classes, made once at import: ferry.Error and its subclasses. InvalidArgument
// is also a ValueError and IoError an OSError, so code that catches the built-in ones works.
struct Exceptions {
  PyObject* error = nullptr;
  PyObject* format = nullptr;
  PyObject* invalid = nullptr;
  PyObject* plan = nullptr;
  PyObject* io = nullptr;
  PyObject* cuda = nullptr;
};
Exceptions exceptions;

PyObject* new_exception(py::module_& m, const char* name, PyObject* bases, const char* doc) {
  const std::string qualified = std::string("ferry.") + name;
  PyObject* type = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, bases, nullptr);
  if (!type) throw py::error_already_set();
  m.add_object(name, py::handle(type));  // the module keeps a reference for the process
  return type;
}

void make_exceptions(py::module_& m) {
  exceptions.error = new_exception(m, "Error", PyExc_Exception, "Base of every error ferry raises.");
  const auto bases = [](PyObject* a, PyObject* b) {
    PyObject* t = PyTuple_Pack(2, a, b);
    if (!t) throw py::error_already_set();
    return py::reinterpret_steal<py::tuple>(t);
  };
  exceptions.format = new_exception(m, "FormatError", exceptions.error,
                                    "A file or format that is not what it claims to be.");
  exceptions.invalid =
      new_exception(m, "InvalidArgument", bases(exceptions.error, PyExc_ValueError).ptr(),
                    "A request that cannot be honoured as asked.");
  exceptions.plan =
      new_exception(m, "PlanError", exceptions.error,
                    "A plan or budget that cannot be met; the message names the smallest budget "
                    "that works.");
  exceptions.io = new_exception(m, "IoError", bases(exceptions.error, PyExc_OSError).ptr(),
                                "A failed system call (reading the weights, for one).");
  exceptions.cuda = new_exception(m, "CudaError", exceptions.error, "A failed CUDA call.");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const PlanError& e) {
      PyErr_SetString(exceptions.plan, e.what());
    } catch (const FormatError& e) {
      PyErr_SetString(exceptions.format, e.what());
    } catch (const InvalidArgument& e) {
      PyErr_SetString(exceptions.invalid, e.what());
    } catch (const CudaError& e) {
      PyErr_SetString(exceptions.cuda, e.what());
    } catch (const Error& e) {
      PyErr_SetString(exceptions.error, e.what());
    } catch (const IoError& e) {
      // str() is the CLI's message; .errno is the failed call's.
      py::object err = py::reinterpret_borrow<py::object>(exceptions.io)(e.what());
      err.attr("errno") = e.code().value();
      PyErr_SetObject(exceptions.io, err.ptr());
    }
  });
}

// Token ids from Python: a list of ints or any integer array (buffer protocol, cast to int32).
std::vector<int32_t> to_ids(const py::handle& ids) {
  const auto a = py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(ids);
  if (!a) throw InvalidArgument("token ids must be a list of ints or an integer array");
  if (a.ndim() != 1)
    throw InvalidArgument(fmt::format(
        "token ids must be one-dimensional; got an array of {} dimensions (pass one row, "
        "e.g. ids[0])",
        a.ndim()));
  return {a.data(), a.data() + a.size()};
}

py::str to_text(const std::string& bytes) {
  // Byte-level tokens may end mid-character: what is not UTF-8 becomes U+FFFD, never an error.
  PyObject* s = PyUnicode_DecodeUTF8(bytes.data(), static_cast<Py_ssize_t>(bytes.size()), "replace");
  if (!s) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(s);
}

// A tokenizer shared with whatever owns it (a model, or nothing when read on its own).
class Tokenizer {
 public:
  explicit Tokenizer(std::shared_ptr<const text::Tokenizer> tok) : tok_(std::move(tok)) {}
  const text::Tokenizer& get() const { return *tok_; }
  std::shared_ptr<const text::Tokenizer> shared() const { return tok_; }

  std::vector<int32_t> encode(const std::string& text, bool add_special, bool parse_special) const {
    py::gil_scoped_release release;
    return tok_->encode(text, add_special, parse_special);
  }
  py::str decode(const py::handle& ids, bool skip_special_tokens) const {
    std::vector<int32_t> v = to_ids(ids);
    if (skip_special_tokens) {
      const std::vector<int32_t> special = special_ids();
      std::erase_if(v, [&](int32_t id) {
        return std::find(special.begin(), special.end(), id) != special.end();
      });
    }
    std::string out;
    {
      py::gil_scoped_release release;
      out = tok_->decode(v);
    }
    return to_text(out);
  }
  // BOS, EOS and the end-of-generation ids: what skip_special_tokens drops.
  std::vector<int32_t> special_ids() const {
    std::vector<int32_t> ids = tok_->eog_ids();
    if (auto b = tok_->bos_id()) ids.push_back(*b);
    if (auto e = tok_->eos_id()) ids.push_back(*e);
    return ids;
  }

 private:
  std::shared_ptr<const text::Tokenizer> tok_;
};

// Text as it becomes printable, token by token (multi-byte characters held back until whole).
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer& tok, bool at_start_of_text)
      : tok_(tok.shared()), dec_(*tok_, at_start_of_text) {}
  py::str push(int32_t id) {
    if (id < 0 || id >= tok_->vocab_size()) return py::str(fmt::format("<|{}|>", id));
    return to_text(dec_.push(id));
  }
  py::str flush() { return to_text(dec_.flush()); }

 private:
  std::shared_ptr<const text::Tokenizer> tok_;
  text::StreamDecoder dec_;
};

// What a callback into Python raised (KeyboardInterrupt from a signal included): kept while ferry
// winds down the computation, then raised once the GIL is back.
struct PendingError {
  std::optional<py::error_already_set> error;
  void raise_if_any() {
    if (error) {
      py::error_already_set e = std::move(*error);
      error.reset();
      throw e;
    }
  }
};

class Model {
 public:
  explicit Model(session::SessionOptions options)
      : session_(std::make_shared<session::Session>(std::move(options))) {
    if (const text::Tokenizer* t = session_->tokenizer())
      tokenizer_ = std::make_shared<Tokenizer>(std::shared_ptr<const text::Tokenizer>(session_, t));
  }

  std::shared_ptr<Tokenizer> tokenizer() const { return tokenizer_; }
  std::optional<std::string> plan_json() const {
    if (!session_->model().plan) return std::nullopt;
    return planner::plan_to_json(*session_->model().plan).dump();
  }
  std::string config_json() const { return session_->config().to_json().dump(); }
  int64_t context() const { return session_->context(); }
  int max_seqs() const { return session_->max_seqs(); }
  int64_t vocab_size() const { return session_->config().vocab_size; }
  std::string device() const { return session_->options().device; }
  std::vector<int32_t> eos_ids() const { return session_->eos_ids(); }
  std::vector<std::string> describe() const { return session_->describe(); }
  std::optional<std::string> draft() const {
    if (session_->draft_k() == 0) return std::nullopt;
    return session_->options().draft;
  }
  int draft_k() const { return session_->draft_k(); }
  // Speculation's counters over every generate() so far: drafts scored, kept, turned down.
  py::dict draft_stats() const {
    py::dict d;
    d["proposed"] = draft_proposed_.load();
    d["accepted"] = draft_accepted_.load();
    d["rejected"] = draft_rejected_.load();
    return d;
  }

  // Generates for each prompt (token ids); on_token(index, id) is called with each new token
  // and may return False to stop that prompt. Batched through the scheduler when the model has
  // more than one sequence slot and there is more than one prompt.
  std::vector<std::vector<int32_t>> generate(const std::vector<py::object>& prompts,
                                             int64_t max_new_tokens, float temperature,
                                             float top_p, int top_k, uint64_t seed,
                                             bool ignore_eos, const py::object& on_token) {
    std::vector<std::vector<int32_t>> ids;
    ids.reserve(prompts.size());
    for (const auto& p : prompts) ids.push_back(to_ids(p));
    engine::GenerateOptions go;
    go.max_new_tokens = max_new_tokens;
    if (!ignore_eos) go.eos_ids = session_->eos_ids();
    go.sampling = {temperature, top_k, top_p, seed};
    go.sampling.validate();
    FERRY_EXPECT(max_new_tokens >= 0, "max_new_tokens is {}; give 0 or more", max_new_tokens);

    PendingError pending;
    bool stopping = false;  // a callback raised or asked to stop everything
    // Called without the GIL: takes it to check for Ctrl-C and to call on_token.
    auto on = [&](std::size_t index, int32_t id) -> bool {
      py::gil_scoped_acquire acquire;
      if (stopping) return false;
      if (PyErr_CheckSignals() != 0) {
        pending.error.emplace();
        stopping = true;
        return false;
      }
      if (on_token.is_none()) return true;
      try {
        const py::object r = on_token(index, id);
        if (!r.is_none() && !r.cast<bool>()) return false;
      } catch (py::error_already_set& e) {
        pending.error.emplace(std::move(e));
        stopping = true;
        return false;
      }
      return true;
    };

    std::vector<std::vector<int32_t>> out(ids.size());
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);
      engine::Engine& eng = session_->engine();
      try {
        if (ids.size() > 1 && session_->max_seqs() > 1) {
          std::vector<engine::Request> requests(ids.size());
          for (std::size_t i = 0; i < ids.size(); ++i) {
            requests[i].prompt = ids[i];
            requests[i].options = go;
            requests[i].on_token = [&on, i](int32_t id) { return on(i, id); };
          }
          // The session's drafters (draft="lookup") verify inside the batch.
          engine::SchedulerOptions so = session_->scheduler_options();
          so.max_queue = std::max<std::size_t>(ids.size(), 64);
          engine::Scheduler scheduler(eng, so);
          std::vector<engine::RequestResult> results(requests.size());
          for (std::size_t i = 0; i < requests.size(); ++i) {
            requests[i].on_done = [&results, i](const engine::RequestResult& r) {
              results[i] = r;
            };
            scheduler.submit(std::move(requests[i]));
          }
          while (scheduler.step()) {
          }
          const engine::SchedulerStats st = scheduler.stats();
          draft_proposed_ += st.draft_tokens_proposed;
          draft_accepted_ += st.draft_tokens_accepted;
          draft_rejected_ += st.draft_tokens_rejected;
          for (std::size_t i = 0; i < results.size(); ++i) {
            if (results[i].reason == engine::FinishReason::error)
              throw Error(results[i].error);  // the engine's own message
            out[i] = std::move(results[i].tokens);
          }
        } else if (const auto drafter = session_->make_drafter()) {
          for (std::size_t i = 0; i < ids.size() && !stopping; ++i) {
            engine::SpeculativeStats st;
            out[i] = engine::generate_speculative(
                eng, *drafter, 0, ids[i], go, {session_->draft_k()},
                [&on, i](int32_t id) { return on(i, id); }, &st);
            draft_proposed_ += static_cast<uint64_t>(st.drafted);
            draft_accepted_ += static_cast<uint64_t>(st.accepted);
            draft_rejected_ += static_cast<uint64_t>(st.rejected);
          }
        } else {
          for (std::size_t i = 0; i < ids.size() && !stopping; ++i)
            out[i] = engine::generate(eng, 0, ids[i], go,
                                      [&on, i](int32_t id) { return on(i, id); });
        }
      } catch (...) {
        reset_all(eng);
        throw;
      }
      // Stopped midway: the slots are emptied so the next call starts clean (generate resets
      // its slot anyway; this also frees the KV blocks at once).
      if (stopping) reset_all(eng);
    }
    pending.raise_if_any();
    return out;
  }

  // Logits after the last id ([vocab]) or after every id ([n, vocab]), float32, written
  // straight from the engine's output into the array (one copy: the engine reuses its buffer).
  py::array_t<float> logits(const py::handle& ids_in, bool all_positions) {
    const std::vector<int32_t> ids = to_ids(ids_in);
    const auto n = static_cast<int64_t>(ids.size());
    FERRY_EXPECT(n > 0, "logits of no tokens: give at least one id");
    const int64_t rows_allowed = session_->options().load.max_logit_rows;
    FERRY_EXPECT(!all_positions || n <= rows_allowed,
                 "logits for all {} positions need {} rows of logits, and this model was loaded "
                 "for {}; load it with max_logit_rows={} (or more)",
                 n, n, rows_allowed, n);
    const int64_t vocab = session_->config().vocab_size;
    py::array_t<float> out = all_positions ? py::array_t<float>({n, vocab})
                                           : py::array_t<float>(static_cast<py::ssize_t>(vocab));
    float* dst = out.mutable_data();
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);
      engine::Engine& eng = session_->engine();
      engine::check_prompt_length(n, eng.context());
      eng.reset(0);
      engine::SeqTokens s{0, ids};
      const std::vector<float>& l =
          eng.forward({&s, 1}, all_positions ? engine::LogitsFor::all : engine::LogitsFor::last);
      const std::size_t count = static_cast<std::size_t>((all_positions ? n : 1) * vocab);
      FERRY_EXPECT(l.size() >= count, "the engine returned {} logits, expected {}", l.size(),
                   count);
      std::memcpy(dst, l.data(), count * sizeof(float));
      eng.reset(0);
    }
    return out;
  }

  py::dict memory() const {
    py::dict d;
    const auto peak = peak_rss_bytes();
    d["peak_rss_bytes"] = peak ? py::cast(*peak) : py::none();
    return d;
  }

 private:
  static void reset_all(engine::Engine& eng) {
    for (int s = 0; s < eng.max_seqs(); ++s) eng.reset(s);
  }

  std::shared_ptr<session::Session> session_;
  std::shared_ptr<Tokenizer> tokenizer_;
  std::mutex mutex_;
  // Written under mutex_, read by draft_stats() whenever.
  std::atomic<uint64_t> draft_proposed_{0};
  std::atomic<uint64_t> draft_accepted_{0};
  std::atomic<uint64_t> draft_rejected_{0};
};

std::optional<uint64_t> size_arg(const py::object& v, bool ram) {
  if (v.is_none()) return std::nullopt;
  if (py::isinstance<py::int_>(v)) {
    const auto n = v.cast<int64_t>();
    FERRY_EXPECT(n > 0, "a memory size of {} bytes: give a positive size, e.g. \"8GiB\"", n);
    return ram ? session::parse_max_ram(std::to_string(n)) : static_cast<uint64_t>(n);
  }
  const std::string text = py::str(v);
  return ram ? session::parse_max_ram(text) : parse_size(text);
}

std::unique_ptr<Model> load(const std::filesystem::path& path, const py::object& max_ram,
                            const std::string& device, const py::object& max_vram,
                            int64_t context, int max_seqs, int64_t max_batch_rows,
                            int64_t max_logit_rows, bool mmap, const py::object& on_progress,
                            const std::optional<std::string>& draft, int draft_k,
                            const std::string& kv_memory) {
  session::SessionOptions so;
  so.draft = draft.value_or("");
  so.draft_k = draft_k;
  so.model = path;
  so.device = device;
  so.load.max_ram_bytes = size_arg(max_ram, true);
  // "device" on the CPU is refused by the plan, as for `ferry run`.
  so.load.kv_memory = planner::parse_kv_memory(kv_memory);
  so.max_vram_bytes = size_arg(max_vram, false);
  so.context = context;
  so.max_seqs = max_seqs;
  so.max_batch_rows = max_batch_rows;
  so.max_logit_rows = max_logit_rows;
  so.mmap = mmap;
  if (!on_progress.is_none())
    so.on_load_progress = [on_progress](uint64_t done, uint64_t total) {
      py::gil_scoped_acquire acquire;
      try {
        on_progress(done, total);
      } catch (py::error_already_set& e) {
        e.discard_as_unraisable("ferry: the load progress callback");
      }
    };
  py::gil_scoped_release release;
  return std::make_unique<Model>(std::move(so));
}

std::string plan_json(const std::filesystem::path& path, const py::object& max_ram,
                      const std::string& profile, const std::string& device,
                      const py::object& max_vram, int64_t context, int batch, bool measure,
                      const std::string& kv_memory) {
  session::PlanQuery q;
  q.model = path;
  q.profile = profile;
  q.device = device;
  q.max_ram_bytes = size_arg(max_ram, false);  // as `ferry plan --max-ram`: any size (a what-if)
  q.max_vram_bytes = size_arg(max_vram, false);
  q.context = context;
  q.batch = batch;
  q.measure = measure;
  q.kv_memory = planner::parse_kv_memory(kv_memory);
  py::gil_scoped_release release;
  return planner::plan_to_json(session::plan_model(q)).dump();
}

std::shared_ptr<Tokenizer> read_tokenizer(const std::filesystem::path& path) {
  std::optional<text::Tokenizer> t;
  {
    py::gil_scoped_release release;
    t = session::try_read_tokenizer(path);
  }
  if (!t)
    throw InvalidArgument(fmt::format(
        "{} has no tokenizer (tokenizer.json, vocab.json + merges.txt, or a GGUF file's); copy "
        "the model's tokenizer files beside its weights",
        path.string()));
  return std::make_shared<Tokenizer>(
      std::make_shared<const text::Tokenizer>(std::move(*t)));
}

}  // namespace

}  // namespace ferry::python

PYBIND11_MODULE(_ferry, m) {
  using namespace ferry;          // NOLINT(google-build-using-namespace)
  using namespace ferry::python;  // NOLINT(google-build-using-namespace)
  m.doc() = "ferry's native module; use the ferry package (import ferry) instead.";
  make_exceptions(m);

  py::class_<Tokenizer, std::shared_ptr<Tokenizer>>(m, "Tokenizer")
      .def("encode", &Tokenizer::encode, py::arg("text"), py::arg("add_special") = true,
           py::arg("parse_special") = true)
      .def("decode", &Tokenizer::decode, py::arg("ids"), py::arg("skip_special_tokens") = false)
      .def_property_readonly("vocab_size", [](const Tokenizer& t) { return t.get().vocab_size(); })
      .def_property_readonly("bos_id", [](const Tokenizer& t) { return t.get().bos_id(); })
      .def_property_readonly("eos_id", [](const Tokenizer& t) { return t.get().eos_id(); })
      .def_property_readonly("eog_ids", [](const Tokenizer& t) { return t.get().eog_ids(); })
      .def_property_readonly("special_ids", &Tokenizer::special_ids)
      .def("token_id", [](const Tokenizer& t, const std::string& s) { return t.get().token_id(s); });

  py::class_<StreamDecoder>(m, "StreamDecoder")
      .def(py::init<const Tokenizer&, bool>(), py::arg("tokenizer"),
           py::arg("at_start_of_text") = false)
      .def("push", &StreamDecoder::push)
      .def("flush", &StreamDecoder::flush);

  py::class_<Model>(m, "Model")
      .def_property_readonly("tokenizer", &Model::tokenizer)
      .def_property_readonly("context", &Model::context)
      .def_property_readonly("max_seqs", &Model::max_seqs)
      .def_property_readonly("vocab_size", &Model::vocab_size)
      .def_property_readonly("device", &Model::device)
      .def_property_readonly("eos_ids", &Model::eos_ids)
      .def("plan_json", &Model::plan_json)
      .def("config_json", &Model::config_json)
      .def("describe", &Model::describe)
      .def_property_readonly("draft", &Model::draft)
      .def_property_readonly("draft_k", &Model::draft_k)
      .def("draft_stats", &Model::draft_stats)
      .def("generate", &Model::generate, py::arg("prompts"), py::arg("max_new_tokens"),
           py::arg("temperature"), py::arg("top_p"), py::arg("top_k"), py::arg("seed"),
           py::arg("ignore_eos"), py::arg("on_token"))
      .def("logits", &Model::logits, py::arg("ids"), py::arg("all_positions") = false)
      .def("memory", &Model::memory);

  m.def("load", &load, py::arg("path"), py::arg("max_ram"), py::arg("device"),
        py::arg("max_vram"), py::arg("context"), py::arg("max_seqs"), py::arg("max_batch_rows"),
        py::arg("max_logit_rows"), py::arg("mmap"), py::arg("on_progress"),
        py::arg("draft") = py::none(), py::arg("draft_k") = 4, py::arg("kv_memory") = "auto");
  m.def("plan_json", &plan_json, py::arg("path"), py::arg("max_ram"), py::arg("profile"),
        py::arg("device"), py::arg("max_vram"), py::arg("context"), py::arg("batch"),
        py::arg("measure"), py::arg("kv_memory") = "auto");
  m.def("read_tokenizer", &read_tokenizer, py::arg("path"));
  m.def("has_gpu", [] {
    py::gil_scoped_release release;
    return backends::find_gpu() != nullptr;
  });
  m.def("compiled_backends", [] { return backends::compiled(); });
  m.def("peak_rss_bytes", [] { return peak_rss_bytes(); });
}
