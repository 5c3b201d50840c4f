#include "runtime/engine/backend.hpp"

#include "offload/layer_streamer.hpp"

namespace ferry::engine {

const offload::StreamerStats* Backend::streamer_stats() const {
  const offload::LayerStreamer* s = host_streamer();
  return s ? &s->stats() : nullptr;
}

}  // namespace ferry::engine
