# _fusednorm_registration_row(<variable> <function> <norm> <direction> <layout> <epilogue> <affine> <schedule>):
# one fusednorm::KernelRegistration initializer (fusednorm/kernel_registry.h), so that fusednorm_add_kernel() and
# the main build's autoscheduled variants (generators/variants.cmake) write the struct's fields in one order.
# Installed beside FusedNormAddKernel.cmake, which includes it.
function(_fusednorm_registration_row variable function norm direction layout epilogue affine schedule)
  string(CONCAT row "    {\"${function}\", \"${norm}\", \"${direction}\", \"${layout}\", \"${epilogue}\", ${affine}, "
                    "\"${schedule}\", &${function}_argv, &${function}_metadata},\n")
  set(${variable} "${row}" PARENT_SCOPE)
endfunction()
