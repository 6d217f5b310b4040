// The interop matrix's C++ client: Apache Thrift C++ (Debian libthrift-dev) with code generated
// from tests/idl/interop.thrift. Built and run by tests/test_interop.py, never committed built.
//
//   cpp_client LABEL HOST PORT DIALECT [LABEL HOST PORT DIALECT ...]
//
// DIALECT: framed-binary | framed-compact | buffered-binary | buffered-compact |
//          header-binary | header-compact-zlib
// For every target it makes the same batch of calls and prints one line per call,
// "LABEL CALL HEX", HEX being the binary-protocol encoding of the generated
// Interop_<method>_result holding what the call returned or threw (so values compare exactly,
// NaN and -0.0 included), or "LABEL CALL APPEXC <type> <message>" for a TApplicationException,
// or "LABEL CALL ERROR <what>" when the connection failed (the rest of that target is skipped).

#include <chrono>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include <thrift/TApplicationException.h>
#include <thrift/protocol/TBinaryProtocol.h>
#include <thrift/protocol/TCompactProtocol.h>
#include <thrift/protocol/THeaderProtocol.h>
#include <thrift/transport/TBufferTransports.h>
#include <thrift/transport/THeaderTransport.h>
#include <thrift/transport/TSocket.h>

#include "Interop.h"

using namespace apache::thrift;
using namespace apache::thrift::protocol;
using namespace apache::thrift::transport;
using namespace interop_gen;

namespace {

const std::string kUnicode = "h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9d\x84\x9e \xe6\x97\xa5\xe6\x9c\xac";
const std::string kNonUtf8("\xff\xfe\x00\x80" "binary\xc3", 11);
const int kMiB = 1 << 20;

template <class Result>
std::string hexOf(const Result& result) {
  auto buffer = std::make_shared<TMemoryBuffer>();
  TBinaryProtocol protocol(buffer);
  result.write(&protocol);
  std::string bytes = buffer->getBufferAsString();
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

// The generated *_result classes declare __set_success() but define no body for it.
template <class Result, class Value>
void succeed(Result& result, const Value& value) {
  result.success = value;
  result.__isset.success = true;
}

struct Target {
  std::string label;
  std::string host;
  int port;
  std::string dialect;
};

class Batch {
 public:
  Batch(const Target& target, InteropClient& client) : target_(target), client_(client) {}

  // Runs fill(result) and prints the result, or the TApplicationException it threw.
  template <class Result, class Fill>
  void call(const std::string& name, Fill fill) {
    Result result;
    try {
      fill(result);
      std::cout << target_.label << " " << name << " " << hexOf(result) << "\n";
    } catch (const TApplicationException& e) {
      std::cout << target_.label << " " << name << " APPEXC " << e.getType() << " " << e.what()
                << "\n";
    }
  }

  void run() {
    auto& c = client_;
    call<Interop_ping_result>("ping", [&](auto&) { c.ping(); });
    call<Interop_echoBool_result>("bool", [&](auto& r) { succeed(r, c.echoBool(false)); });
    call<Interop_echoByte_result>("byte-min", [&](auto& r) { succeed(r, c.echoByte(-128)); });
    call<Interop_echoByte_result>("byte-max", [&](auto& r) { succeed(r, c.echoByte(127)); });
    call<Interop_echoI16_result>("i16-min", [&](auto& r) { succeed(r, c.echoI16(-32768)); });
    call<Interop_echoI32_result>("i32-min", [&](auto& r) {
      succeed(r, c.echoI32(std::numeric_limits<int32_t>::min()));
    });
    call<Interop_echoI32_result>("i32-max", [&](auto& r) {
      succeed(r, c.echoI32(std::numeric_limits<int32_t>::max()));
    });
    call<Interop_echoI64_result>("i64-min", [&](auto& r) {
      succeed(r, c.echoI64(std::numeric_limits<int64_t>::min()));
    });
    call<Interop_echoI64_result>("i64-max", [&](auto& r) {
      succeed(r, c.echoI64(std::numeric_limits<int64_t>::max()));
    });
    const std::pair<const char*, double> doubles[] = {
        {"nan", std::numeric_limits<double>::quiet_NaN()},
        {"inf", std::numeric_limits<double>::infinity()},
        {"-inf", -std::numeric_limits<double>::infinity()},
        {"-0.0", -0.0},
        {"max", std::numeric_limits<double>::max()},
        {"denormal", std::numeric_limits<double>::denorm_min()},
    };
    for (const auto& [label, value] : doubles) {
      call<Interop_echoDouble_result>(std::string("double-") + label, [&, value = value](auto& r) {
        succeed(r, c.echoDouble(value));
      });
    }
    call<Interop_echoString_result>("string-unicode", [&](auto& r) {
      c.echoString(r.success, kUnicode);
      r.__isset.success = true;
    });
    call<Interop_echoBinary_result>("binary-non-utf8", [&](auto& r) {
      c.echoBinary(r.success, kNonUtf8);
      r.__isset.success = true;
    });
    call<Interop_echoEnum_result>("enum", [&](auto& r) { succeed(r, c.echoEnum(Color::BLUE)); });

    Scalars scalars;
    scalars.__set_flag(true);
    scalars.__set_tiny(-128);
    scalars.__set_small(-32768);
    scalars.__set_medium(std::numeric_limits<int32_t>::max());
    scalars.__set_large(std::numeric_limits<int64_t>::min());
    scalars.__set_real(-0.0);
    scalars.__set_text(kUnicode);
    scalars.__set_data(kNonUtf8);
    scalars.__set_color(Color::BLUE);
    call<Interop_echoScalars_result>("scalars", [&](auto& r) {
      c.echoScalars(r.success, scalars);
      r.__isset.success = true;
    });

    Point point;
    point.__set_x(-1);
    point.__set_y(std::numeric_limits<int32_t>::max());
    Shape byPoint;
    byPoint.__set_point(point);
    call<Interop_echoUnion_result>("union-point", [&](auto& r) {
      c.echoUnion(r.success, byPoint);
      r.__isset.success = true;
    });
    Shape byCode;
    byCode.__set_code(std::numeric_limits<int64_t>::min());
    call<Interop_echoUnion_result>("union-code", [&](auto& r) {
      c.echoUnion(r.success, byCode);
      r.__isset.success = true;
    });

    Everything everything;  // note and maybe stay unset (optional)
    everything.__set_scalars(scalars);
    everything.__set_ints({0, -1, std::numeric_limits<int32_t>::max(),
                           std::numeric_limits<int32_t>::min()});
    everything.__set_tags({"a", "b", kUnicode});
    everything.__set_counts({{"x", std::numeric_limits<int64_t>::max()},
                             {"", std::numeric_limits<int64_t>::min()}});
    everything.__set_nested({{{1, {"one"}}, {-2, {}}}, {}});
    Point origin;
    origin.__set_x(0);
    origin.__set_y(0);
    everything.__set_paths({{"p", {point, origin}}, {"empty", {}}});
    Shape byLabel;
    byLabel.__set_label(kUnicode);
    everything.__set_shape(byLabel);
    everything.__set_reals({std::numeric_limits<double>::infinity(),
                            -std::numeric_limits<double>::infinity(),
                            std::numeric_limits<double>::quiet_NaN(),
                            std::numeric_limits<double>::denorm_min(),
                            std::numeric_limits<double>::max(), -0.0});
    std::string allBytes;
    for (int i = 0; i < 256; ++i) allBytes += static_cast<char>(i);
    everything.__set_blobs({"", kNonUtf8, allBytes});
    everything.__set_palette({{Color::RED, Color::GREEN}, {}});
    call<Interop_echoEverything_result>("everything", [&](auto& r) {
      c.echoEverything(r.success, everything);
      r.__isset.success = true;
    });
    call<Interop_echoEverything_result>("everything-empty", [&](auto& r) {
      c.echoEverything(r.success, Everything());
      r.__isset.success = true;
    });
    call<Interop_echoList_result>("list", [&](auto& r) {
      c.echoList(r.success, {std::numeric_limits<int64_t>::max(),
                             std::numeric_limits<int64_t>::min(), 0});
      r.__isset.success = true;
    });
    call<Interop_echoSet_result>("set", [&](auto& r) {
      c.echoSet(r.success, {"x", kUnicode});
      r.__isset.success = true;
    });
    call<Interop_echoMap_result>("map", [&](auto& r) {
      c.echoMap(r.success, {{"a", {1, 2}}, {kUnicode, {}}});
      r.__isset.success = true;
    });
    for (int code = 0; code < 4; ++code) {
      call<Interop_fail_result>("fail-" + std::to_string(code), [&](auto& r) {
        try {
          c.fail(r.success, code);
          r.__isset.success = true;
        } catch (const NotFound& e) {
          r.notFound = e;
          r.__isset.notFound = true;
        } catch (const Invalid& e) {
          r.invalid = e;
          r.__isset.invalid = true;
        }
      });
    }
    std::string mib;
    for (int i = 0; i < kMiB; ++i) mib += static_cast<char>(i & 255);
    call<Interop_echoBinary_result>("binary-1mib", [&](auto& r) {
      c.echoBinary(r.success, mib);
      r.__isset.success = true;
    });
    call<Interop_big_result>("big-1mib", [&](auto& r) {
      c.big(r.success, kMiB);
      r.__isset.success = true;
    });
    call<Interop_sizeOf_result>("sizeof-1mib", [&](auto& r) {
      succeed(r, c.sizeOf(std::string(kMiB, '\0')));
    });
    call<Interop_fired_result>("oneway", [&](auto& r) {
      const std::string token = "cpp-" + target_.label;
      c.fire(token);
      int32_t count = 0;
      for (int i = 0; i < 500 && (count = c.fired(token)) == 0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      succeed(r, count > 0 ? 1 : 0);
    });
  }

 private:
  const Target& target_;
  InteropClient& client_;
};

void runTarget(const Target& target) {
  auto socket = std::make_shared<TSocket>(target.host, target.port);
  socket->setRecvTimeout(10000);
  socket->setSendTimeout(10000);
  std::shared_ptr<TTransport> transport;
  std::shared_ptr<TProtocol> protocol;
  const std::string& d = target.dialect;
  if (d.rfind("header-", 0) == 0) {
    // THeaderProtocol wraps the socket in its own THeaderTransport (handing it one would
    // nest a header frame inside another).
    protocol = std::make_shared<THeaderProtocol>(
        socket, d == "header-binary" ? T_BINARY_PROTOCOL : T_COMPACT_PROTOCOL);
    auto header = std::dynamic_pointer_cast<THeaderTransport>(protocol->getTransport());
    if (d == "header-compact-zlib") {
      header->setTransform(THeaderTransport::ZLIB_TRANSFORM);
    }
    header->setHeader("tenant", "interop");  // cleared after each flush: only the first call
    transport = header;
  } else {
    if (d.rfind("framed-", 0) == 0) {
      transport = std::make_shared<TFramedTransport>(socket);
    } else {
      transport = std::make_shared<TBufferedTransport>(socket);
    }
    if (d.find("compact") != std::string::npos) {
      protocol = std::make_shared<TCompactProtocol>(transport);
    } else {
      protocol = std::make_shared<TBinaryProtocol>(transport);
    }
  }
  InteropClient client(protocol);
  try {
    transport->open();
    Batch(target, client).run();
    transport->close();
  } catch (const std::exception& e) {
    std::string what = e.what();
    for (char& ch : what) {
      if (ch == '\n') ch = ' ';
    }
    std::cout << target.label << " connection ERROR " << what << "\n";
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5 || (argc - 1) % 4 != 0) {
    std::cerr << "usage: cpp_client LABEL HOST PORT DIALECT [...]\n";
    return 2;
  }
  for (int i = 1; i + 3 < argc; i += 4) {
    runTarget(Target{argv[i], argv[i + 1], std::stoi(argv[i + 2]), argv[i + 3]});
  }
  std::cout << "done" << std::endl;
  return 0;
}
