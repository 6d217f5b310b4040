#include <iostream>
#include <memory>
#include <string>
#include <thrift/protocol/TBinaryProtocol.h>
#include <thrift/protocol/TCompactProtocol.h>
#include <thrift/transport/TBufferTransports.h>
#include "keydiff_types.h"
using namespace apache::thrift;
static std::string unhex(const std::string& s) {
  std::string out;
  for (size_t i = 0; i + 1 < s.size(); i += 2) out.push_back((char)std::stoi(s.substr(i, 2), nullptr, 16));
  return out;
}
static bool decode(const std::string& kind, const std::string& body, Args& out) {
  try {
    std::string raw = unhex(body);
    auto buf = std::make_shared<transport::TMemoryBuffer>((uint8_t*)raw.data(), (uint32_t)raw.size());
    std::unique_ptr<protocol::TProtocol> p;
    if (kind == "c") p.reset(new protocol::TCompactProtocol(buf)); else p.reset(new protocol::TBinaryProtocol(buf));
    out.read(p.get());
    return true;
  } catch (...) { return false; }
}
int main() {
  std::string k1, b1, k2, b2;
  while (std::cin >> k1 >> b1 >> k2 >> b2) {
    Args x, y;
    bool ox = decode(k1, b1 == "-" ? "" : b1, x), oy = decode(k2, b2 == "-" ? "" : b2, y);
    bool same = (!ox && !oy) || (ox && oy && x == y && x.__isset.b == y.__isset.b);
    std::cout << (same ? "same" : "diff") << std::endl;
  }
}
