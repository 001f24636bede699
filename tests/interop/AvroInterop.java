// The Java side of tests/test_interop_java.py: Apache Avro's own single-object
// encoding (org.apache.avro.message) run against altlas's .avsc contracts, so
// the tests can show that JVM consumers and producers agree with our codec
// byte for byte. Run with the single-file source launcher, no build step:
//
//   java -cp 'JARS/*' tests/interop/AvroInterop.java COMMAND ARGS...
//
// Commands:
//   encode-vision-request SCHEMA_DIR OUT   write a VisionRequest (the values
//                                          the Python test asserts) to OUT
//   decode-vision-result SCHEMA_DIR IN     decode the VisionResult in IN with
//                                          BinaryMessageDecoder (it checks the
//                                          fingerprint) and print it as JSON
//   fingerprints SOURCE...                 one JSON line per schema: a SOURCE
//                                          folder gives every named type in its
//                                          .avsc files, a SOURCE file its one
//                                          self-contained schema
//
// Output is ASCII-only JSON (non-ASCII escaped) so that it survives any
// platform charset on the way to Python.

import com.fasterxml.jackson.core.json.JsonWriteFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.json.JsonMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.stream.Stream;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.SchemaParser;
import org.apache.avro.data.TimeConversions;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.generic.GenericRecordBuilder;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;

public class AvroInterop {
  static final String NAMESPACE = "altlas.events";
  static final ObjectMapper JSON = JsonMapper.builder().enable(JsonWriteFeature.ESCAPE_NON_ASCII).build();

  public static void main(String[] args) throws Exception {
    String command = args.length > 0 ? args[0] : "";
    if (command.equals("encode-vision-request") && args.length == 3) {
      encodeVisionRequest(loadFolder(Path.of(args[1])), Path.of(args[2]));
    } else if (command.equals("decode-vision-result") && args.length == 3) {
      decodeVisionResult(loadFolder(Path.of(args[1])), Path.of(args[2]));
    } else if (command.equals("fingerprints") && args.length >= 2) {
      fingerprints(Arrays.copyOfRange(args, 1, args.length));
    } else {
      usage();
    }
  }

  static void usage() {
    System.err.println(
        "usage: AvroInterop encode-vision-request SCHEMA_DIR OUT\n"
            + "       AvroInterop decode-vision-result SCHEMA_DIR IN\n"
            + "       AvroInterop fingerprints SCHEMA_DIR_OR_BUNDLE...");
    System.exit(2);
  }

  /**
   * Every named type defined in the .avsc files of a folder, by full name.
   *
   * <p>SchemaParser (Avro 1.12) resolves names referenced across files whatever the order they
   * are parsed in, the way avro-maven-plugin reads a folder of contracts; this keeps the Java side
   * independent of our Python bundling.
   */
  static Map<String, Schema> loadFolder(Path folder) throws IOException {
    SchemaParser parser = new SchemaParser();
    List<Path> files;
    try (Stream<Path> listing = Files.list(folder)) {
      files = listing.filter(p -> p.getFileName().toString().endsWith(".avsc")).sorted().toList();
    }
    if (files.isEmpty()) {
      throw new IllegalArgumentException("no .avsc files in " + folder);
    }
    for (Path file : files) {
      parser.parse(file);
    }
    Map<String, Schema> byName = new TreeMap<>();
    for (Schema schema : parser.getParsedNamedSchemas()) {
      byName.put(schema.getFullName(), schema);
    }
    return byName;
  }

  static Schema named(Map<String, Schema> schemas, String shortName) {
    Schema schema = schemas.get(NAMESPACE + "." + shortName);
    if (schema == null) {
      throw new IllegalArgumentException("no schema " + NAMESPACE + "." + shortName);
    }
    return schema;
  }

  /** A VisionRequest exercising every branch of the params union; the Python test asserts these. */
  static void encodeVisionRequest(Map<String, Schema> schemas, Path out) throws IOException {
    Schema schema = named(schemas, "VisionRequest");
    // timestamp-millis as java.time.Instant, the way Java producers usually hold it.
    GenericData model = new GenericData();
    model.addLogicalTypeConversion(new TimeConversions.TimestampMillisConversion());

    Map<String, Object> params = new LinkedHashMap<>();
    params.put("top_k", 5L);
    params.put("threshold", 0.25d);
    params.put("classes", List.of("cat", "dog", "gr\u00f6\u00dfe"));
    params.put("half", true);
    params.put("strategy", "letterbox");
    params.put("seed", null);

    Map<String, String> metadata = new LinkedHashMap<>();
    metadata.put("tenant", "acme");
    metadata.put("note", "gr\u00f6\u00dfe \u2713");

    byte[] payload = {(byte) 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0x00, (byte) 0xff, 0x7f};
    GenericRecord request =
        new GenericRecordBuilder(schema)
            .set("request_id", "java-req-1")
            .set("task", new GenericData.EnumSymbol(schema.getField("task").schema(), "detect"))
            .set("model", "yolo@2")
            .set("params", params)
            .set("payload", ByteBuffer.wrap(payload))
            .set("content_type", "image/png")
            // reply_topic left out: GenericRecordBuilder fills the schema default (null).
            .set("created_at", Instant.parse("2026-01-02T03:04:05.678Z"))
            .set("deadline", Instant.parse("2026-01-02T03:05:05.678Z"))
            .set("metadata", metadata)
            .build();
    Files.write(out, bytes(new BinaryMessageEncoder<GenericRecord>(model, schema).encode(request)));
  }

  /** Decode with the fingerprint check, then print the record and Java's own re-encoding of it. */
  static void decodeVisionResult(Map<String, Schema> schemas, Path in) throws IOException {
    Schema schema = named(schemas, "VisionResult");
    BinaryMessageDecoder<GenericRecord> decoder = new BinaryMessageDecoder<>(GenericData.get(), schema);
    GenericRecord result = decoder.decode(Files.readAllBytes(in));
    Object output = result.get("output");
    ObjectNode node = JSON.createObjectNode();
    // toString() prints a union branch without its name; report which one was read.
    node.put("output_type", output instanceof GenericRecord r ? r.getSchema().getFullName() : null);
    ByteBuffer again = new BinaryMessageEncoder<GenericRecord>(GenericData.get(), schema).encode(result);
    node.put("reencoded", HexFormat.of().formatHex(bytes(again)));
    node.set("record", JSON.readTree(result.toString()));
    System.out.println(JSON.writeValueAsString(node));
  }

  /** Parsing canonical form and CRC-64-AVRO fingerprint (little-endian, as on the wire). */
  static void fingerprints(String[] sources) throws IOException {
    for (String source : sources) {
      Path path = Path.of(source);
      List<Schema> schemas = new ArrayList<>();
      if (Files.isDirectory(path)) {
        schemas.addAll(loadFolder(path).values());
      } else {
        schemas.add(new SchemaParser().parse(path).mainSchema());
      }
      for (Schema schema : schemas) {
        byte[] fingerprint =
            ByteBuffer.allocate(8)
                .order(ByteOrder.LITTLE_ENDIAN)
                .putLong(SchemaNormalization.parsingFingerprint64(schema))
                .array();
        ObjectNode node = JSON.createObjectNode();
        node.put("source", source);
        node.put("name", schema.getFullName());
        node.put("fingerprint", HexFormat.of().formatHex(fingerprint));
        node.put("canonical", SchemaNormalization.toParsingForm(schema));
        System.out.println(JSON.writeValueAsString(node));
      }
    }
  }

  static byte[] bytes(ByteBuffer buffer) {
    byte[] out = new byte[buffer.remaining()];
    buffer.duplicate().get(out);
    return out;
  }
}
