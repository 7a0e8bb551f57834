/*
 * A stand-in for bcryptprimitives.dll, used only in the Wine prefix that runs this project's
 * Windows test binaries.
 *
 * Rust's standard library (1.78 and later) draws its random bytes from
 * bcryptprimitives.dll!ProcessPrng, which Wine 8 does not provide, so every Rust test binary
 * would fail to load there. This DLL exports ProcessPrng and fills the buffer from
 * advapi32!SystemFunction036 (RtlGenRandom), which Wine implements on top of the host's
 * random source. It is never shipped with the sensor.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    /* RtlGenRandom takes a 32-bit length, so larger requests are filled in chunks. */
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}

BOOL WINAPI DllMain(HINSTANCE instance, DWORD reason, LPVOID reserved)
{
    (void)instance;
    (void)reason;
    (void)reserved;
    return TRUE;
}
