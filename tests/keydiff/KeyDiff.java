import java.io.BufferedReader;
import java.io.InputStreamReader;
import org.apache.thrift.TDeserializer;
import org.apache.thrift.protocol.TBinaryProtocol;
import org.apache.thrift.protocol.TCompactProtocol;

public class KeyDiff {
  static byte[] hex(String s) {
    byte[] out = new byte[s.length() / 2];
    for (int i = 0; i < out.length; i++) out[i] = (byte) Integer.parseInt(s.substring(2 * i, 2 * i + 2), 16);
    return out;
  }
  static Object decode(String kind, String body) {
    try {
      TDeserializer d = new TDeserializer(kind.equals("c") ? new TCompactProtocol.Factory() : new TBinaryProtocol.Factory());
      Args a = new Args();
      d.deserialize(a, hex(body));
      return a;
    } catch (Exception e) {
      return "error";
    }
  }
  public static void main(String[] argv) throws Exception {
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
    String line;
    while ((line = in.readLine()) != null) {
      String[] p = line.split(" ", -1);
      Object a = decode(p[0], p[1]), b = decode(p[2], p[3]);
      System.out.println(a.equals(b) ? "same" : "diff");
    }
  }
}
