# Writes OUT, a C file defining dr_header_text() as the bytes of HEADER, so the
# bindings cdef exactly the declarations of the library they load.
file(READ "${HEADER}" hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE "${OUT}.tmp"
  "/* generated from core/include/diffrl.h by cmake/embed_header.cmake */\n"
  "static const char text[] = {${bytes} 0x00};\n"
  "const char *dr_header_text(void) { return text; }\n")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
